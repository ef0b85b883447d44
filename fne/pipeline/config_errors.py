"""Where a pipeline file's mistakes are: TOML keys located by line (tomllib gives no line
numbers), and a collector that reports every mistake at once as `file:line: key: why`."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from fne.errors import FneError


class PipelineError(FneError):
    """Mistakes in a pipeline file (all of them, each with its key and line)."""


@contextlib.contextmanager
def in_the_files_words(in_file: bool):
    """A value refused (`fne.option_handling.refusal`) that the pipeline file gave is named by its key
    (``bad device='tpu'``: the keys are Python's keywords) on the command line too; one that
    `fne run --device` gave keeps the flag's words."""
    try:
        yield
    except FneError as e:
        if in_file and hasattr(e, "cli"):
            e.cli = str(e)
        raise


_KEY = r'(?:"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)'
_DOTTED = re.compile(rf"^\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*=")
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]\]?")


def _split_key(s: str) -> tuple[str, ...]:
    parts = re.findall(_KEY, s)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


class Locator:
    """Line numbers of keys in TOML text (tomllib gives none): headers and `key =` lines."""

    def __init__(self, text: str):
        self.entries: list[tuple[int, tuple, bool]] = []  # (line, path, is_header)
        current: tuple = ()
        counts: dict[tuple, int] = {}
        for n, line in enumerate(text.splitlines(), 1):
            stripped = line.split("#", 1)[0] if '"' not in line and "'" not in line else line
            h = _HEADER.match(stripped)
            if h:
                path = _split_key(h.group(2))
                if h.group(1) == "[[":
                    counts[path] = counts.get(path, -1) + 1
                    path = path + (counts[path],)
                else:
                    # [backbones.x] under an array refers to its last element
                    for k in range(len(path), 0, -1):
                        if path[:k] in counts:
                            path = path[:k] + (counts[path[:k]],) + path[k:]
                            break
                current = path
                self.entries.append((n, path, True))
                continue
            k = _DOTTED.match(stripped)
            if k:
                self.entries.append((n, current + _split_key(k.group(1)), False))

    def line(self, path: tuple) -> int | None:
        path = tuple(path)
        for n, p, _ in self.entries:
            if p == path:
                return n
        # the closest enclosing key or header that exists (inline tables, missing keys)
        for k in range(len(path) - 1, 0, -1):
            for n, p, _ in self.entries:
                if p == path[:k]:
                    return n
        return None


def dotted(path: tuple) -> str:
    """A key path as the file writes it (`backbones[1].arch`, quoting keys that need it)."""
    out = []
    for p in path:
        if isinstance(p, int):
            out[-1] = f"{out[-1]}[{p}]"
        else:
            out.append(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p))
    return ".".join(out)


class Errors:
    """Every problem of a pipeline file, each with its line and key path, raised together
    (`raise_if_any`) rather than one per run."""

    def __init__(self, file: Path, loc: Locator):
        self.file, self.loc, self.items = file, loc, []

    def add(self, path: tuple, msg: str) -> None:
        line = self.loc.line(path)
        where = f"{self.file}:{line}" if line else f"{self.file}"
        self.items.append((line or 0, f"{where}: {dotted(path) or '(top level)'}: {msg}"))

    def raise_if_any(self) -> None:
        if self.items:
            n = len(self.items)
            lines = [m for _, m in sorted(self.items, key=lambda x: x[0])]
            if n == 1:
                raise PipelineError(lines[0])
            raise PipelineError(f"{n} problems in {self.file}:\n  " + "\n  ".join(lines))
