"""Parquet files (and Hugging Face Hub datasets) as DATA: an image column and a label column.

The image column holds encoded bytes, or Hugging Face's `{bytes, path}` struct; files saved by
`datasets` work as they are, their ClassLabel names included. A row group is decoded a slice of
rows at a time as its rows are asked for (`fne.data.containers.GroupReader`). `hf:NAME[:CONFIG][@SPLIT]` loads a Hub dataset through the
optional `datasets` package (`pip install datasets`, or fne-toolkit's `hf` extra) once, into
Parquet files in the cache.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from fne.data.containers import Listing, normalise_split, one_line
from fne.data.labels import label_text
from fne.errors import DataError
from fne.network import hub_cli

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes")
LABEL_COLUMNS = ("label", "labels", "fine_label", "cls", "class", "target")


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("Parquet DATA needs pyarrow: pip install pyarrow (or fne-toolkit[parquet])") from None
    return pq


def _binary(t) -> bool:
    """Whether an Arrow type holds bytes: binary, large binary, or binary view (pyarrow 14+, which
    `_image_column` did not take: "no image column")."""
    import pyarrow as pa

    view = getattr(pa.types, "is_binary_view", lambda _: False)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or view(t)


def _image_column(schema) -> str | None:
    import pyarrow as pa

    def holds_bytes(t) -> bool:  # a struct's `bytes` of text (not image bytes) is none: it was a TypeError when read
        return _binary(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
                              and _binary(t.field("bytes").type))

    for name in IMAGE_COLUMNS:
        if any(f.name == name and holds_bytes(f.type) for f in schema):
            return name
    return next((f.name for f in schema if holds_bytes(f.type)), None)


def _field_type(schema, name: str):
    """The type of column `name`, its first where the file names two columns alike (`schema.field`
    raises KeyError on those; `_repeated` refuses them where they are read)."""
    return next(f.type for f in schema if f.name == name)


def _repeated(schema, path: str, columns: tuple) -> None:
    """`DataError` naming `path` where a column it reads (image, label, split) is named twice in it:
    which of the two holds the images or labels is unknown."""
    twice = [c for c in dict.fromkeys(columns) if c and schema.names.count(c) > 1]
    if twice:
        raise DataError(f"{path}: {len(twice)} column name(s) appear more than once ({', '.join(twice)}): which "
                        f"column to read is unknown; rename or drop the copies")


def _class_names(schema, column: str, path: str) -> list[str] | None:
    """Hugging Face ClassLabel names of `column`, from the file's `huggingface` metadata, read as
    labels are (`label_text`: stripped); `DataError` naming `path` where they are empty or repeated
    (metadata written by hand: `datasets` refuses them), as HDF5's `class_names` are refused."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(raw)["info"]["features"][column]
        names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    if not names:
        return None
    if not isinstance(names, list):  # "ab" was the classes a and b
        raise DataError(f"{path}: the ClassLabel names of column {column!r} are {type(names).__name__} "
                        f"{str(names)[:40]!r}, not a list of names (one per index)")
    text = [label_text(n) for n in names]
    if None in text or len(set(text)) < len(text):
        bad = sorted({repr(str(n)) for n, t in zip(names, text) if t is None or text.count(t) > 1})
        raise DataError(f"{path}: the ClassLabel names of column {column!r} have empty or repeated names "
                        f"({', '.join(bad)}): each index must name one class")
    return text


def list_parquet(path: str, st: os.stat_result, label_key: str | None) -> Listing:
    """Read a Parquet file's metadata and its label and split columns -> its `Listing`."""
    pq = _pq()
    listing = Listing(path=path, kind="parquet", size=st.st_size, mtime_ns=st.st_mtime_ns)
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on a damaged footer
        listing.broken = f"unreadable Parquet file ({one_line(e)})"
        return listing
    column = _image_column(schema)
    if column is None:
        raise DataError(f"{path}: no image column (bytes, or a {{bytes, path}} struct) among "
                        f"{', '.join(schema.names)}")
    if label_key and label_key not in schema.names:
        raise DataError(f"{path}: no label column {label_key!r} (columns: {', '.join(schema.names)})")
    if label_key and nested(_field_type(schema, label_key)):
        raise DataError(f"{path}: label column {label_key!r} holds {_field_type(schema, label_key)} values, not one "
                        f"label an image")
    label_col = label_key or next((c for c in LABEL_COLUMNS if c in schema.names and not nested(_field_type(schema, c))),
                                  None)  # a multi-label `labels` list is no class: DATA unlabelled, its type named
    _repeated(schema, path, (column, label_col, "split"))
    _check_split_column(schema, path)
    listing.column, listing.class_names = column, (_class_names(schema, label_col, path) if label_col else None)
    cols = [c for c in (label_col, "split") if c and c in schema.names]
    row = 0
    for g in range(pf.num_row_groups):
        try:
            meta = pf.read_row_group(g, columns=cols).to_pydict() if cols else {}
            n = pf.metadata.row_group(g).num_rows
        except Exception as e:
            listing.broken = f"unreadable from row {row} ({one_line(e)})"
            break
        labels = meta.get(label_col, [None] * n) if label_col else [None] * n
        splits = meta.get("split", [None] * n)
        empty = _cells_without_bytes(pf, g, column)
        for k in range(n):
            name = str(row + k)
            try:
                if k in empty:
                    raise ValueError(empty[k])
                split = None if splits[k] is None else normalise_split(splits[k])
                if splits[k] is not None and split is None:
                    raise ValueError(f"split {splits[k]!r} is not train, test or validation")
                listing.members.append([name, g, k, _label(labels[k], listing.class_names), split])
            except ValueError as e:
                listing.bad.append([name, str(e)])
        row += n
    return listing


def _check_split_column(schema, path: str) -> None:
    """`DataError` naming `path` where its `split` column holds no text (integers 0/1, floats,
    booleans): which number is the test part is unknown, and each row was skipped with its own
    "split 1 is not train, test or validation" until none was left."""
    import pyarrow as pa

    if "split" not in schema.names:
        return
    t = _field_type(schema, "split")
    value = t.value_type if pa.types.is_dictionary(t) else t  # pandas' categorical column
    if not (pa.types.is_null(value) or any(f(value) for f in (
            pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary))
            or str(value) in ("string_view", "binary_view")):
        raise DataError(f"{path}: its split column holds {t} values, not split names: fne reads text such as "
                        f"train, test or validation there (or, without the column, the file names: "
                        f"train-00000-of-00003.parquet)")


def nested(t) -> bool:
    """Whether a column's type is a list, struct or map: a multi-label `labels` column (the Hub's
    Sequence(ClassLabel)), whose cells would otherwise become classes named `[0, 3]`."""
    import pyarrow as pa

    return pa.types.is_nested(t)


def _cells_without_bytes(pf, g: int, column: str) -> dict[int, str]:
    """Rows of row group `g` whose image cell holds no bytes (null, or a `{bytes, path}` struct of
    a path only) -> why: skipped at listing, as a bad label is, rather than stopping each verb
    that reads every image's bytes. The column's statistics say where none is null, so the
    image bytes are read here only for a group with nulls (or written without statistics)."""
    rg = pf.metadata.row_group(g)
    chunks = [rg.column(i) for i in range(rg.num_columns)
              if rg.column(i).path_in_schema in (column, f"{column}.bytes")]
    if chunks and all(c.is_stats_set and c.statistics.has_null_count and c.statistics.null_count == 0
                      for c in chunks):
        return {}
    cells = pf.read_row_group(g, columns=[column]).column(0).to_pylist()
    out = {}
    for k, v in enumerate(cells):
        if v is None:
            out[k] = "no image (an empty cell)"
        elif isinstance(v, dict) and v.get("bytes") is None:
            out[k] = "no image bytes in the cell (a path only)"
    return out


def _label(v, names: list[str] | None) -> str | None:
    if names is not None and isinstance(v, float) and v.is_integer():  # an index column with gaps, as pandas writes it
        v = int(v)
    if v is None or (isinstance(v, int) and v < 0 and names):  # HF uses -1 for "no label"
        return None
    if names is not None and isinstance(v, int):
        if v >= len(names):
            raise ValueError(f"label {v} outside the {len(names)} class names")
        return names[v]
    return label_text(v)  # NaN (pandas' missing value) is no label, 3.0 is "3"


# ----------------------------------------------------------------- hf:NAME[:CONFIG][@SPLIT]

_HF_RE = re.compile(r"^hf:(?P<name>[\w.\-]+(?:/[\w.\-]+)?)(?::(?P<config>[\w.\-]+))?(?:@(?P<split>[\w.\-]+))?$")


def parse_hf(spec: str) -> tuple[str, str | None, str | None]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> (NAME, CONFIG or None, SPLIT or None); `DataError` otherwise."""
    m = _HF_RE.match(spec)
    if not m:
        raise DataError(f"DATA {spec!r}: expected hf:NAME[:CONFIG][@SPLIT], e.g. hf:nelorth/oxford-flowers@train")
    return m["name"], m["config"], m["split"]


def hf_folder(spec: str, cache: str | Path | None = None) -> Path:
    """Where `hf:` DATA is kept as Parquet files once loaded (in the cache folder, see
    `fne.cache.store.local_root`)."""
    from fne.cache.store import local_root

    name, config, _ = parse_hf(spec)
    return local_root(cache) / "hf" / name.replace("/", "--") / (config or "default")


def hf_download_hint(spec: str, cache: str | Path | None = None) -> str:
    """How to get `hf:` DATA without a network here: the hub command to run elsewhere, or
    the cache folder a run with a network fills."""
    name, config, _ = parse_hf(spec)
    folder = hf_folder(spec, cache)
    return (f"download it where there is a network (`{hub_cli()} download {name} --repo-type dataset "
            f"--local-dir DIR`{'' if config is None else f', config {config}'}) and give DIR as DATA, "
            f"or run once with a network to fill {folder}")


def hf_available(spec: str, cache: str | Path | None = None) -> bool:
    """Whether `hf:` DATA is already kept as Parquet files in the cache (read with no network)."""
    return (hf_folder(spec, cache) / ".complete").is_file()


def materialise_hf(spec: str, cache: str | Path | None = None) -> tuple[Path, str | None]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> (the folder of its Parquet files, the split asked for),
    loading it through `datasets` the first time."""
    name, config, split = parse_hf(spec)
    folder = hf_folder(spec, cache)
    if not hf_available(spec, cache):
        _hf_to_parquet(spec, name, config, folder, cache)
    return folder, split


def _hf_to_parquet(spec: str, name: str, config: str | None, folder: Path, cache: str | Path | None) -> None:
    try:
        import datasets
    except ImportError:
        raise DataError(f"DATA {spec}: needs the optional `datasets` package (pip install datasets, or fne-toolkit[hf]), "
                        f"or {hf_download_hint(spec, cache)}") from None
    from fne.network import hf_offline, unreachable

    if not hf_offline(datasets=True):  # else `datasets` reads its own cache, at once
        from huggingface_hub.constants import ENDPOINT

        why = unreachable(ENDPOINT)  # in seconds, not after a minute of retries
        if why is not None:
            raise DataError(f"DATA {spec}: cannot load from the Hugging Face Hub ({why}); {hf_download_hint(spec, cache)}"
                            f" (HF_HUB_OFFLINE=1 reads what an earlier load left in `datasets`' own cache)")
    import logging
    import warnings

    quiet = [logging.getLogger(n) for n in ("datasets", "huggingface_hub")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:  # their retry notices would bury the one line below
            q.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = datasets.load_dataset(name, config)
    except Exception as e:  # offline, unknown name, gated: one line, what to download and where
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(f"DATA {spec}: cannot load from the Hugging Face Hub ({why}); "
                        f"{hf_download_hint(spec, cache)}") from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    folder.mkdir(parents=True, exist_ok=True)
    from datasets.table import embed_table_storage

    for split_name, part in parts.items():
        # Images the Hub keeps as paths get their bytes in the file, as `push_to_hub` does.
        part = part.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
        part.to_parquet(str(folder / f"{split_name}-00000-of-00001.parquet"))
    (folder / ".complete").write_text(spec + "\n")
