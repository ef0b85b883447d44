"""Direct mode's class map: target classes read through the source network's own classifier.

A map is JSON {target class: [source index or name, ...]}, a file or (`fne.train`, a pipeline
file) the dict itself, which the run records as RUN_DIR/class_map.json either way; a target's
score is the sum (or max) of the softmax probabilities of its source classes.
"""

from __future__ import annotations

import difflib
import json
import numbers
import reprlib
from pathlib import Path

import numpy as np

from fne.errors import FneError
from fne.option_handling import named, refusal
from fne.options import class_map_problem

# where a run records the class map it scored with (`recorded`)
MAP_FILE = "class_map.json"


def refused(path: str | Path | dict, said: str) -> FneError:
    """The OptionError `CLASS_MAP: said`, naming --class-map as the caller did (`class_map='m.json'`;
    a dict, shortened: `class_map={'0': ['tench']}`)."""
    if isinstance(path, dict):
        return refusal(lambda py: f"{named('class_map', py)}={reprlib.repr(path)}: {said}")
    return refusal(lambda py: f"{named('class_map', py, str(path))}: {said}")


def plain_indices(class_map):
    """`class_map` with numpy integers among a dict's source indices as Python's (as every option
    takes numpy numbers, `fne.option_handling.plain`), so that it is checked and recorded as JSON;
    anything else as given."""
    if not isinstance(class_map, dict):
        return class_map

    def plain(v):
        return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, (int, np.bool_)) else v

    return {k: [plain(x) for x in v] if isinstance(v, list) else plain(v) for k, v in class_map.items()}


def check_inline(class_map: str | Path | dict | None) -> None:
    """An OptionError where `class_map` is a dict of the wrong shape (`fne.options.class_map_problem`),
    before any work; a path is read, and everything checked, by `read_class_map`."""
    if isinstance(class_map, dict) and (problem := class_map_problem(class_map)):
        raise refused(class_map, problem)


def recorded(class_map: str | dict | None, out: str | Path) -> tuple[str | None, Path | None]:
    """(the class map as metrics.json's options record it, the file the run writes the map it read
    to): `out`/class_map.json, so that the run folder holds the map it was scored with, whatever
    becomes of a file given; a dict is recorded by that file's path, a path as given; None, none."""
    if class_map is None:
        return None, None
    path = Path(out) / MAP_FILE
    return (str(path) if isinstance(class_map, dict) else class_map), path


def given_map(path: str | Path | dict) -> object:
    """The class map as given: the dict, or a file's JSON (any JSON: `read_class_map` checks it),
    read as UTF-8 (a Windows editor's byte-order mark is fine, as in a CSV); a target class
    written twice in one object is refused: JSON keeps the last silently, so the run scored a map
    other than the file's (and recorded that one as class_map.json)."""
    if isinstance(path, dict):
        check_inline(path)
        return path
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"), object_pairs_hook=_once)
    except FileNotFoundError:
        raise refused(path, "no such file") from None
    except _Repeated as e:
        raise refused(path, f"target class {e.args[0]!r} is written twice: give each class once, "
                            f"its source classes in one list") from None
    except (OSError, ValueError) as e:
        raise refused(path, f"not readable JSON ({e})") from None


class _Repeated(Exception):
    """A key written twice in one JSON object (its name: args[0])."""


def _once(pairs: list[tuple[str, object]]) -> dict:
    """json's object_pairs_hook: the object's dict, or _Repeated naming a key it writes twice."""
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise _Repeated(k)
        seen[k] = v
    return seen


def read_class_map(path: str | Path | dict, classes: list[str], categories: list[str],
                   raw: object = None) -> dict[str, list[int]]:
    """JSON {target class: [source index or name, ...]}, a file or the dict, -> {target: [source
    indices]}, checked; `raw`: the map `given_map` read from `path`, where the caller has it."""
    raw = given_map(path) if raw is None else raw
    if not isinstance(raw, dict) or not raw:
        raise refused(path, "expected a JSON object {target class: [source classes]}")
    unknown = [t for t in raw if t not in classes]
    if unknown:
        raise refused(path, f"unknown target class(es) {', '.join(map(repr, unknown))}; "
                            f"DATA classes: {', '.join(classes)}")
    lower: dict[str, list[int]] = {}
    for k, c in enumerate(categories):
        lower.setdefault(c.lower(), []).append(k)
    out: dict[str, list[int]] = {}
    owner: dict[int, str] = {}
    for target in classes:  # DATA's class order
        if target not in raw:
            continue
        srcs = raw[target] if isinstance(raw[target], list) else [raw[target]]
        if not srcs:
            raise refused(path, f"target class {target!r} maps to no source class")
        idx = []
        for s in srcs:
            k = _source_index(s, lower, categories, path)
            if owner.get(k) == target:  # by index and by name, say
                raise refused(path, f"target class {target!r} lists source class {categories[k]!r} ({k}) twice")
            if k in owner:
                raise refused(path, f"source class {categories[k]!r} ({k}) is mapped to "
                                    f"both {owner[k]!r} and {target!r}")
            owner[k] = target
            idx.append(k)
        out[target] = idx
    return out


def _source_index(s, lower: dict[str, list[int]], categories: list[str], path) -> int:
    if isinstance(s, int) and not isinstance(s, bool):
        if not 0 <= s < len(categories):
            raise refused(path, f"source index {s} out of range 0..{len(categories) - 1}")
        return s
    if not isinstance(s, str):
        raise refused(path, f"source class {s!r} is neither a name nor an index")
    hits = lower.get(s.strip().lower(), [])
    if len(hits) > 1:
        raise refused(path, f"source class name {s!r} is ambiguous (indices "
                            f"{', '.join(map(str, hits))}); give the index")
    if not hits:
        close = difflib.get_close_matches(s, categories, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise refused(path, f"unknown source class {s!r}{hint}")
    return hits[0]


def mapped_test_images(te: np.ndarray, y: np.ndarray, classes: list[str], cmap: dict[str, list[int]],
                       path) -> tuple[np.ndarray, int]:
    """(the test images of mapped classes, how many were left out): only those can be scored."""
    mapped = np.array([classes.index(c) for c in cmap])
    keep = np.isin(y[te], mapped)
    if not keep.any():
        raise refused(path, "no test images of the mapped classes")
    return te[keep], int((~keep).sum())


def direct_scores(probs: np.ndarray, cmap: dict[str, list[int]], how: str) -> np.ndarray:
    """Target score = sum (default) or max of the softmax of its source classes."""
    cols = [probs[:, src] for src in cmap.values()]
    return np.stack([c.sum(1) if how == "sum" else c.max(1) for c in cols], axis=1)


def direct_run_refusal(run_dir: str | Path) -> FneError:
    """`fne predict` / `fne.load` of a direct mode run: it trained nothing, so it keeps no network
    (no model.pt): new images are scored by direct mode itself, with the same class map (the run's
    class_map.json; a run written before 30 Nov 2026 from a file names that file in its options)."""
    kept = Path(run_dir) / MAP_FILE
    which = kept if kept.is_file() else "metrics.json's options"
    return refusal(lambda py: (
        f"{run_dir}: a {named('mode', py, 'direct', plain=True)} run trains nothing and keeps no model.pt (its "
        f"network is the source one, metrics.json's arch and weights); score new images with "
        + ("fne.train(DATA, 'direct', class_map=...)" if py else "`fne train DATA --mode direct --class-map MAP`")
        + f" (the run's class map: {which})"), FneError)
