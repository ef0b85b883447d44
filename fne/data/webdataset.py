"""WebDataset tar shards: members grouped by basename, an image plus its label.

`000017.jpg` + `000017.cls` (or `.txt`, or a field of `000017.json`) make one sample. Listing
reads the tar's headers and its small label members, front to back; image bytes are read later
by offset (`ContainerReader.read`). A truncated tar yields the members before the break.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from pathlib import Path

from fne.cache.fs import replace_file
from fne.data.containers import Listing, normalise_split
from fne.data.formats import IMAGE_EXTENSIONS
from fne.data.labels import label_text
from fne.errors import DataError

LABEL_EXTENSIONS = ("cls", "txt")  # then the `label` field of .json
LABEL_MAX_BYTES = 1 << 16


def sample_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the basename; the rest is
    the extension (`a/b/0001.seg.png` -> (`a/b/0001`, `seg.png`))."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def open_tar(path: str) -> tarfile.TarFile:
    """`path` opened as a plain tar (its first header read); DataError naming it when it is none."""
    try:
        return tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: not a readable tar file ({e}); WebDataset shards are plain .tar") from e


def list_tar(path: str, st: os.stat_result, label_key: str | None) -> Listing:
    """Read a tar's headers (and label members) once, front to back -> its `Listing`.

    A hard or symbolic link to an image member earlier in the tar is that member's bytes (tar
    stores a hard-linked file's second name so); a key with two members of one name (a tar
    appended to) is skipped, named, not paired by chance with the other's label."""
    if label_key and "." + label_key.lower().lstrip(".") in IMAGE_EXTENSIONS:  # every image read as a label
        raise DataError(f"{path}: label_key {label_key!r} is the images' extension: give the extension of the "
                        f"label members (cls, txt, ...) or a field of each sample's .json")
    listing = Listing(path=path, kind="tar", size=st.st_size, mtime_ns=st.st_mtime_ns)
    samples: dict[str, dict] = {}
    files: dict[str, tuple[int, int]] = {}  # regular member name -> (data offset, size), for links
    seen: set[str] = set()
    twice: dict[str, str] = {}  # key -> its member name seen twice
    tf = open_tar(path)
    last = None
    with tf:
        try:
            for info in tf:
                if not (info.isfile() or info.issym() or info.islnk()) \
                        or info.name.rpartition("/")[2].startswith("."):
                    continue  # hidden members (macOS's `._x.jpg`) are no samples, as for webdataset
                if info.offset_data + info.size > st.st_size:
                    listing.broken = f"truncated inside member {info.name}"
                    break
                key, ext = sample_key(info.name)
                s = samples.setdefault(key, {})
                if info.name in seen:
                    twice.setdefault(key, info.name)
                seen.add(info.name)
                if info.isfile():
                    files[info.name] = (info.offset_data, info.size)
                if ext in LABEL_EXTENSIONS or ext in ("json", "split") or ext == (label_key or "").lower():
                    if (text := _label_member(tf, info)) is not None:
                        s[ext] = text
                elif os.path.splitext(info.name)[1].lower() in IMAGE_EXTENSIONS and "image" not in s:
                    s["image"] = (info.name, *_data_of(info, files))
                last = info.name
        except (tarfile.TarError, OSError, EOFError) as e:
            listing.broken = f"truncated after member {last} ({e})" if last else f"unreadable ({e})"
        if listing.broken is None and not _ends_cleanly(path, tf.offset):
            listing.broken = f"truncated after member {last}" if last else "truncated"
    for key, s in samples.items():
        if "image" not in s:
            continue
        name, offset, size = s["image"]
        try:
            if key in twice:
                raise ValueError(f"the tar holds two members named {twice[key]}: which image goes with which "
                                 f"label is unknown; keep one")
            if offset is None:
                raise ValueError(size)
            label, split = _label(s, label_key), _split(s)
        except ValueError as e:
            listing.bad.append([name, str(e)])
            continue
        listing.members.append([name, offset, size, label, split])
    return listing


def _label_member(tf: tarfile.TarFile, info: tarfile.TarInfo) -> bytes | None:
    """A label (or .json) member's bytes, at most `LABEL_MAX_BYTES`; a link's are its target's, as an
    image member's are (`_data_of`): a label linked to another sample's read as "no label". None for
    what is no such member (a folder, a link to a member not in the tar, a larger file)."""
    if not (info.isfile() or info.islnk() or info.issym()):
        return None
    try:
        f = tf.extractfile(info)  # a link: its target, read from where it is in the tar
        data = f.read(LABEL_MAX_BYTES + 1) if f is not None else None
    except (KeyError, tarfile.TarError, OSError):  # a link to a member not in the tar
        return None
    return data if data is not None and len(data) <= LABEL_MAX_BYTES else None


def _data_of(info: tarfile.TarInfo, files: dict[str, tuple[int, int]]) -> tuple[int | None, int | str]:
    """(data offset, size) of an image member; of a link, its target's, a regular member before
    it (as `tarfile.extractfile` follows it), else (None, why it has no bytes)."""
    if info.isfile():
        return info.offset_data, info.size
    target = info.linkname if info.islnk() else \
        posixpath.normpath(posixpath.join(posixpath.dirname(info.name), info.linkname))
    if target in files:
        return files[target]
    kind = "hard" if info.islnk() else "symbolic"
    return None, f"a {kind} link to {info.linkname}, which is no file before it in the tar"


def _ends_cleanly(path: str, offset: int) -> bool:
    """True when the tar's end-of-archive block (512 zero bytes) follows its last member: tarfile
    stops silently at a short or damaged header, which is how a cut tar looks."""
    with open(path, "rb") as f:
        f.seek(offset)
        block = f.read(512)
    return len(block) == 512 and not any(block)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8").strip()


def _json(s: dict) -> dict:
    try:
        doc = json.loads(s["json"])
    except ValueError as e:
        raise ValueError(f"bad .json ({e})") from None
    return doc if isinstance(doc, dict) else {}


def _label(s: dict, label_key: str | None) -> str | None:
    """The sample's label (`fne.data.labels.label_text`): the `label_key` member or .json field,
    else .cls, .txt, .json's label; a JSON null or an empty member is no label."""
    if label_key:
        if label_key.lower() in s:
            return label_text(s[label_key.lower()])
        if "json" in s and label_key in _json(s):
            return _json_label(_json(s)[label_key])
        return None
    for ext in LABEL_EXTENSIONS:
        if ext in s:
            return label_text(s[ext])
    if "json" in s:
        doc = _json(s)
        for field in ("label", "cls", "class"):
            if field in doc:
                return _json_label(doc[field])
    return None


def _json_label(v) -> str | None:
    if isinstance(v, (dict, list)):
        raise ValueError(f"label {json.dumps(v)[:40]} is not a single value")
    return label_text(v)


def _split(s: dict) -> str | None:
    raw = None
    if "split" in s:
        raw = _text(s["split"])
    elif "json" in s:
        raw = _json(s).get("split")
    if raw is None:
        return None
    split = normalise_split(raw)
    if split is None:
        raise ValueError(f"split {raw!r} is not train, test or validation")
    return split


def write_shard(dataset, indices: list[int], path: str | os.PathLike) -> None:
    """Write items of a container dataset as one WebDataset shard (image, .txt label, .split),
    atomically: a pipeline's `max_per_class` subset of tar or Parquet DATA.

    Parameters
    ----------
    dataset
        A `Dataset` whose items are container members.
    indices
        The items to write, in order.
    path
        The shard to write (replaced whole once written).
    """
    import io

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w") as tf:
            for k, i in enumerate(indices):
                m = dataset.sources[i]
                ext = os.path.splitext(m.name)[1].lower() if dataset.container.listings[m.container].kind == "tar" \
                    else ".jpg"  # any extension of IMAGE_EXTENSIONS: PIL reads the format from the bytes
                parts = [(ext, dataset.container.read(m))]
                if dataset.labels is not None:
                    parts.append((".txt", dataset.labels[i].encode()))
                if dataset.splits is not None:
                    parts.append((".split", dataset.splits[i].encode()))
                for suffix, payload in parts:
                    info = tarfile.TarInfo(f"{k:07d}{suffix}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))

    replace_file(Path(path), write)

