"""What reads the options declared in `fne.options`: one declaration, four uses.

- the command line: `add_arguments` (argparse) and `from_args` (back to keywords), so the CLI
  cannot drop an option the API takes;
- the Python API's signatures and checks: `keywords` lists a verb's options in its signature,
  `resolve` turns a verb's keywords into the option objects and `check` raises one `OptionError`
  (a ValueError) naming a bad value's keyword (``head='svmm'``), and on the command line its flag
  (``--head 'svmm'``: `refusal`);
- messages that name an option: `named` (its keyword in Python, its flag on the command line);
- the pipeline schema (`schema`) and its value checks (`problems`), read by fne.pipeline.config.

Pure Python (no torch, no scikit-learn): the CLI and the pipeline configuration import it cheaply.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import numbers
import os
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields, replace

from fne.errors import FneError, OptionError, numpy_bool
from fne.options import (
    AdviseOptions,
    CacheOptions,
    ExtractOptions,
    FitOptions,
    Opt,
    StoreOptions,
    TrainConfig,
)


def _opts(cls) -> list[tuple[dataclasses.Field, Opt]]:
    return [(f, f.metadata.get("opt", Opt())) for f in fields(cls)]


def flag(f: dataclasses.Field) -> str:
    """A field's command-line flag: its `Opt.flag`, else `--` and its name with dashes."""
    o = f.metadata.get("opt", Opt())
    return o.flag or "--" + f.name.replace("_", "-")


def _types(cls) -> dict[str, object]:
    """The field types of an options class (its annotations, resolved in its module)."""
    return typing.get_type_hints(cls)


def _base(t) -> type:
    """int for `int | None`, str for `str | None`, ..."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def add_arguments(parser, *classes, only: Iterable[str] | None = None) -> None:
    """Add the command-line options of `classes`' fields (those with cli=True, or named in `only`)."""
    only = set(only) if only is not None else None
    for cls in classes:
        hints = _types(cls)
        for f, o in _opts(cls):
            if (only is not None and f.name not in only) or (only is None and not o.cli):
                continue
            kind = _base(hints[f.name])
            kw: dict = {"dest": f.name, "help": o.help}
            if f.default not in (MISSING, None) and kind is not bool and "default" not in o.help:
                kw["help"] = f"{o.help} (default: {f.default})"  # --help lists every default
            if kind is bool:
                kw["action"] = "store_false" if f.default is True else "store_true"
            else:
                kw["type"] = o.parse or (kind if kind in (int, float) else str)
                if o.choices or o.metavar:  # checked by `check`, which names the flag in one line
                    kw["metavar"] = o.metavar or "{" + ",".join(map(str, o.choices)) + "}"
            if f.default is MISSING:
                kw["required"] = True
            else:  # an option some modes ignore: absent unless given, so that `unused` can tell
                kw["default"] = argparse.SUPPRESS if o.modes else f.default
            parser.add_argument(flag(f), **kw)


def keywords(*classes, only: Iterable[str] | None = None):
    """Decorate a Python verb whose ``**options`` are the fields of `classes` (or those named in
    `only`): its signature, as `help()` and `inspect.signature` show it, lists each as a
    keyword-only parameter with its declared default, after the verb's own parameters."""
    import inspect

    def decorate(func):
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in own}
        empty = inspect.Parameter.empty
        extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                   default=empty if f.default is MISSING else f.default, annotation=f.type)
                 for cls in classes for f in fields(cls)
                 if f.name not in taken and (only is None or f.name in only)]
        func.__signature__ = sig.replace(parameters=own + extra)
        added = [f for cls in classes for f in fields(cls) if f.name in {p.name for p in extra}]
        func.__doc__ = documented(func.__doc__, added, classes)
        return func

    return decorate


# The Raises entry of a verb whose keywords `keywords` lists (`documented`): what `check` raises.
OPTION_ERROR = """OptionError
    An argument it does not accept, named as its keyword, before any work: a choice not listed,
    a number out of its bounds, and where the verb takes them an unknown ``arch``, ``features``
    naming no layer of it, an output path that is a file, inside DATA or unwritable; a value of
    the wrong type is a TypeError.
"""


def documented(doc: str | None, added: list[dataclasses.Field], classes) -> str | None:
    """`doc` (numpydoc) with an entry for each keyword in `added` at the end of its Parameters
    section, written from the declaration (type, choices, default, help; a command-line flag in
    the help as its keyword): the keywords are documented where they are declared, once. An entry
    the docstring writes for one of them (where the verb gives it another meaning or default:
    predict's ``cache``) is moved there instead. A ``**options`` entry (not in the signature
    `keywords` makes) goes, its text moved to Notes; a Raises section gets `OPTION_ERROR`."""
    import re
    import textwrap

    head = re.search(r"^( *)Parameters\n\1-+\n", doc or "", re.M)
    if not added or head is None:
        return doc
    ind, start = head.group(1), head.end()
    nxt = re.compile(rf"^{ind}\w[\w ]*\n{ind}-+\n", re.M).search(doc, start)
    end = nxt.start() if nxt else len(doc)
    blocks = re.findall(rf"^({ind}\S.*\n(?:{ind} +.*\n|\n)*)", doc[start:end].rstrip("\n ") + "\n", re.M)
    written = {b.split(" : ")[0].strip(): b.rstrip("\n ") + "\n" for b in blocks}
    notes = "".join(textwrap.dedent(b.split("\n", 1)[1]).strip() for n, b in written.items() if n.startswith("**"))
    names = {f.name for f in added}
    options = [f for cls in classes for f in fields(cls)]
    entries = [b for n, b in written.items() if n not in names and not n.startswith("**")]
    entries += [written.get(f.name) or _entry(f, ind, options) for f in added]
    doc = doc[:start] + "".join(entries) + ("\n" + doc[end:] if nxt else ind)
    raises = re.search(rf"^{ind}Raises\n{ind}-+\n", doc, re.M)
    if raises and not re.search(rf"^{ind}OptionError$", doc, re.M):  # what `check` raises, said once
        doc = doc[:raises.end()] + textwrap.indent(OPTION_ERROR, ind) + doc[raises.end():]
    if notes:
        doc = doc.rstrip() + f"\n\n{ind}Notes\n{ind}-----\n" + textwrap.indent(notes, ind) + f"\n{ind}"
    return doc


def as_keys(text: str, options: Iterable[dataclasses.Field], off: str, mark: str) -> str:
    """`text` (an option's help) with each command-line flag of `options` said as its keyword
    between `mark`s, a --no-NAME switch as NAME and `off`: in a docstring ``augment=False``
    (`off` "=False"), in a pipeline file's key help `augment = false`. A text option's flag followed
    by a value that option documents (one of its choices, or a word of its own help) is said with
    it: `--weights random` as ``weights="random"`` / `weights = "random"`."""
    import re

    by_flag = {flag(f): f for f in options}
    eq = off.replace("False", "").replace("false", "")  # "=" in a docstring, " = " in a pipeline file

    def said(m: re.Match) -> str:
        f = by_flag.get(m[1])
        if f is None:
            return m[0]
        if m[1].startswith("--no-"):
            return f"{mark}{f.name}{off}{mark}{m[2] or ''}"
        o = f.metadata.get("opt", Opt())
        word = (m[2] or "").strip()
        if word and "str" in str(f.type) and (word in (o.choices or ()) or re.search(rf"\b{word}\b", o.help)):
            return f'{mark}{f.name}{eq}"{word}"{mark}'
        return f"{mark}{f.name}{mark}{m[2] or ''}"

    return re.sub(r"(--[a-z][a-z0-9-]*)( [a-z][a-z0-9-]*)?", said, text)


def _entry(f: dataclasses.Field, ind: str, options: list[dataclasses.Field]) -> str:
    """A numpydoc entry of option field `f`: ``name : type, default value`` and its help."""
    import textwrap

    o = f.metadata.get("opt", Opt())
    kind = "{" + ", ".join(map(repr, o.choices)) + "}" if o.choices else str(f.type)
    default = "" if f.default is MISSING else f", default {f.default!r}"
    text = as_keys(o.help, options, "=False", "``")
    if f.default is True and flag(f).startswith("--no-"):  # the help says what the switch does
        text = f"False: {text}"
    if o.bound and o.bound.startswith(text):  # --device: the bound says it all
        text = o.bound
    elif o.bound and o.bound not in text:
        text += f" ({o.bound})"
    body = textwrap.fill(text + ("" if text.endswith(".") else "."), 100, break_on_hyphens=False,
                         initial_indent=ind + "    ", subsequent_indent=ind + "    ")
    return f"{ind}{f.name} : {kind}{default}\n{body}\n"


def names(*classes, cli_only: bool = False) -> list[str]:
    """The field names of `classes`' options, in order (`cli_only`: those the CLI declares)."""
    return [f.name for cls in classes for f, o in _opts(cls) if o.cli or not cli_only]


def from_args(args, *classes) -> dict:
    """The keywords of `classes`' fields that `args` (an argparse Namespace) holds."""
    return {n: getattr(args, n) for n in names(*classes, cli_only=True) if hasattr(args, n)}


def _refused(v, o: Opt) -> str | None:
    """"choice" or "bound" when `o` does not accept the value `v`; None when it does."""
    if v is None:
        return None
    if o.choices and v not in o.choices:
        return "choice"
    if o.check is not None and (not o.check(v) or (isinstance(v, float) and not math.isfinite(v))):
        return "bound"  # a bounded number is finite: --lr inf trains to nan
    return None


def _wanted(v, o: Opt) -> str:
    """What a bounded option wants, said of the refused value `v` (an infinity: a finite number)."""
    return f"a finite number {o.bound}" if isinstance(v, float) and math.isinf(v) else o.bound


def _of_type(v, hint) -> bool:
    """Whether `v` is of the declared type: numpy integers count as int, numpy bools as bool, a
    Path as str, a bool is not a number."""
    for k in [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]:
        k = typing.get_origin(k) or k  # tuple[int, int] -> tuple
        if k is str and isinstance(v, (str, os.PathLike)):
            return True
        if k in (int, float) and isinstance(v, numbers.Integral if k is int else numbers.Real):
            return not isinstance(v, bool)
        if k is bool and numpy_bool(v):
            return True
        if k not in (str, int, float) and isinstance(v, k):
            return True
    return False


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "True or False", tuple: "a tuple",
               dict: "a dict"}


def named(f: dataclasses.Field | str, python: bool, value=MISSING, plain: bool = False) -> str:
    """Option `f` (a field, or a field's name) as a message names it, with `value` when given: in
    Python its keyword (``head``, ``head='svmm'``), on the command line its flag (``--head``,
    ``--head 'svmm'``; a name's declared flag, ``--seed-weights`` for weights_seed). `plain`: the
    command line's value as typed (``--mode direct``), for a value cited, not refused."""
    if python:
        name = f if isinstance(f, str) else f.name
        return name if value is MISSING else f"{name}={value!r}"
    switch = _declared().get(f) if isinstance(f, str) else f
    if isinstance(value, bool) and switch is not None and isinstance(switch.default, bool):
        # a switch's value as typed: `--no-augment` (augment False), else `without --no-augment`
        return flag(switch) if value != switch.default else f"without {flag(switch)}"
    name = _flag_of(f) if isinstance(f, str) else flag(f)
    return name if value is MISSING else f"{name} {value if plain else repr(value)}"


def toml_value(v) -> str:
    """`v` as a TOML file writes it: true / false, a "quoted" string, a [list], an {inline = table};
    None, which a file cannot write (it leaves the key out), as (unset)."""
    import json

    if v is None:
        return "(unset)"
    if isinstance(v, bool) or numpy_bool(v):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k if str(k).isidentifier() else json.dumps(str(k))} = {toml_value(x)}"
                               for k, x in v.items()) + "}"
    if isinstance(v, numbers.Number):
        return repr(int(v) if isinstance(v, numbers.Integral) else float(v))
    return json.dumps(str(v), ensure_ascii=False)  # TOML's basic strings escape as JSON's do


def keyed(name: str, value) -> str:
    """Option `name` with `value` as a pipeline file writes it: ``augment = false``, ``lr = 0.01``."""
    return f"{name} = {toml_value(value)}"


@functools.cache
def _declared() -> dict[str, dataclasses.Field]:
    """The fields of the options a message may name, by name."""
    return {f.name: f for cls in (StoreOptions, ExtractOptions, FitOptions, AdviseOptions, CacheOptions,
                                  TrainConfig) for f in fields(cls)}


def _flag_of(name: str) -> str:
    """The flag of the option `name` (its declared one, but for a --no-NAME switch: a value of
    NAME is said of --NAME), else --name with dashes."""
    given = flag(_declared()[name]) if name in _declared() else ""
    return given if given and not given.startswith("--no-") else "--" + name.replace("_", "-")


def refusal(text: Callable[[bool], str], cls: type[FneError] = OptionError) -> FneError:
    """The error (`cls`: OptionError, or the class callers tell apart: WeightsError, DataError,
    CacheError, FneError) of a refused option value: `text(python)` is its message, naming options
    with `named(..., python)`; the exception's message is Python's (``bad seed=-1: ...``), its
    `cli` the command line's (``bad --seed -1: ...``), which the CLI prints."""
    error = cls(text(True))
    error.cli = text(False)
    return error


def check(obj) -> None:
    """Raise TypeError naming the keyword of the first value of the wrong type (the API's
    mistake: the command line parses its strings), then OptionError (a ValueError) naming the
    first value `obj` does not accept (`refusal`: its keyword, on the command line its flag)."""
    hints = _types(type(obj))
    for f, _ in _opts(type(obj)):
        v = getattr(obj, f.name)
        nullable = type(None) in typing.get_args(hints[f.name]) or f.default is None
        if (v is not None or not nullable) and not _of_type(v, hints[f.name]):
            kinds = [typing.get_origin(a) or a for a in typing.get_args(hints[f.name]) or (hints[f.name],)
                     if a is not type(None)]
            want = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise TypeError(f"{f.name} must be {want}, not {type(v).__name__} {v!r}")
    for f, o in _opts(type(obj)):
        v, why = getattr(obj, f.name), _refused(getattr(obj, f.name), o)
        if why is not None:
            raise _refused_error(f, v, o, why)


def _refused_error(f: dataclasses.Field, v, o: Opt, why: str) -> OptionError:
    """The OptionError of the value `v` that option `f` refuses (`why`: `_refused`'s)."""
    if why == "choice":
        return refusal(lambda py: f"unknown {named(f, py, v)}; choose from {', '.join(map(str, o.choices))}")
    return refusal(lambda py: f"bad {named(f, py, v)}: {named(f, py)} must be {_wanted(v, o)}")


def uses(cls, mode: str, name: str) -> bool:
    """Whether `fne train`'s mode `mode` uses option `name` of `cls` (its declared `Opt.modes`)."""
    declared = {f.name: o for f, o in _opts(cls)}
    return name not in declared or not declared[name].modes or mode in declared[name].modes


def used_by(cls, name: str, quote: Callable[[str], str] = str) -> str:
    """The modes that use option `name` of `cls`, in words: "frozen or finetune" (`quote`d:
    "'frozen' or 'finetune'" with repr)."""
    modes = [quote(m) for m in next(o.modes for f, o in _opts(cls) if f.name == name)]
    return " or ".join(filter(None, [", ".join(modes[:-1]), modes[-1]]))


def unused(cls, mode: str, given: Iterable[str]) -> None:
    """Raise OptionError naming the first option in `given` (those the user set: the command
    line's given flags, the API's keywords other than None) that `mode` does not use; a mode
    ignoring an option it was given left the user believing it mattered."""
    for f in fields(cls):
        if f.name in given and not uses(cls, mode, f.name):
            raise _unused_error(cls, f, mode)


def _unused_error(cls, f: dataclasses.Field, mode: str) -> OptionError:
    """The OptionError of option `f` given to `mode`, which does not use it (`unused`)."""
    return refusal(lambda py: f"{named(f, py)} applies to {named('mode', py)} {used_by(cls, f.name, repr if py else str)} "
                              f"only, not {repr(mode) if py else mode}")


def drawn_given(obj) -> list[dataclasses.Field]:
    """The fields of options `obj` (FitOptions, TrainConfig, AdviseOptions) that set random splits
    (`Opt.drawn`) and hold a value other than their declared default: those a DATA with its own
    split leaves unused (`fne.data.splits.not_applied`)."""
    return [f for f, o in _opts(type(obj)) if o.drawn and getattr(obj, f.name) != f.default]


def problems(cls, values: dict) -> list[tuple[str, str]]:
    """(key, why) for each value of a pipeline table that `cls`' declaration refuses."""
    declared = {f.name: o for f, o in _opts(cls)}
    out = []
    for k, v in values.items():
        why = _refused(v, declared[k]) if k in declared else None
        if why == "choice":
            out.append((k, f"{v!r}: expected one of {', '.join(map(str, declared[k].choices))}"))
        elif why == "bound":
            kind = "a finite number" if isinstance(v, float) and math.isinf(v) else declared[k].kind
            out.append((k, f"{v!r}: expected {kind} {declared[k].bound}"))
    return out


_SCHEMA_TYPES = {str: "str", int: "int", float: "float", bool: "bool"}


def schema(cls, only: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """key -> (pipeline type, description) of the fields a pipeline file may set (or of `only`)."""
    hints, exclude = _types(cls), set(exclude)
    only = set(only) if only is not None else None
    out = {}
    for f, o in _opts(cls):
        if f.name in exclude or (only is not None and f.name not in only) or (only is None and not o.pipeline):
            continue
        kinds = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if a is not type(None)]
        # in the file's terms: the flags it names as keys (`augment = false`, not --no-augment)
        text = as_keys(o.help, _declared().values(), " = false", "`") if o.help else f"fne {flag(f)}"
        if kinds == [bool] and flag(f).startswith("--no-"):  # the help says what the switch, false, does
            text = f"false: {text}"
        out[f.name] = ("|".join(_SCHEMA_TYPES[k] for k in kinds), text)
    return out


def defaults(cls: type) -> dict[str, typing.Any]:
    """Field name -> its declared default (MISSING where it has none), read at each call: a
    pipeline file's key left out takes the option's default, whatever the declaration says now."""
    return {f.name: f.default for f in fields(cls)}


def not_in_pipelines(cls) -> tuple[str, ...]:
    """The fields of `cls` that a pipeline file does not set (the runner sets them per step)."""
    return tuple(f.name for f, o in _opts(cls) if not o.pipeline)


def plain(obj):
    """`obj` with numpy numbers and bools as Python's and Paths as strings, as the command line gives them:
    what metrics.json, a checkpoint's arguments and the store's records write as JSON."""
    changed = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, os.PathLike):
            changed[f.name] = os.fspath(v)
        elif numpy_bool(v):  # no numbers.Integral
            changed[f.name] = bool(v)
        elif isinstance(v, numbers.Integral) and not isinstance(v, int):
            changed[f.name] = int(v)
        elif isinstance(v, numbers.Real) and not isinstance(v, (int, float)):
            changed[f.name] = float(v)
    return replace(obj, **changed) if changed else obj


def resolve(kwargs: dict, *classes, given: dict | None = None, only: Iterable[str] | None = None) -> list:
    """Split a verb's keywords among its option classes; -> one checked instance per class.

    given: class -> an instance to start from (a verb's ``store`` keyword: the caller's StoreSpec, or
    None); keywords override its fields. A keyword no class declares (or, with `only`, none of those named there) is a
    TypeError, as for any Python function; the other fields keep their defaults.
    """
    unexpected(kwargs, *classes, only=only)
    given = given or {}
    left = dict(kwargs)
    out = []
    for cls in classes:
        mine = {n: left.pop(n) for n in [f.name for f in fields(cls)] if n in left}
        base = given.get(cls)
        if base is not None and not isinstance(base, cls):
            raise TypeError(f"store must be a {cls.__module__}.{cls.__name__} or None, not {type(base).__name__} "
                            f"{base!r}")
        obj = replace(base, **mine) if base is not None else cls(**mine)
        check(obj)
        out.append(plain(obj))
    return out


def unexpected(kwargs: dict, *classes, only: Iterable[str] | None = None) -> None:
    """A keyword that none of `classes` declares (or that is not in `only`: a verb that takes some
    of a class's fields) is a TypeError, as for any Python function."""
    known = [f.name for cls in classes for f in fields(cls) if only is None or f.name in only]
    left = sorted(set(kwargs) - set(known))
    if left:  # with the declared keyword each is nearest to, as a pipeline file's unknown key is
        close = {k: difflib.get_close_matches(k, known, n=1) for k in left}
        raise TypeError("unexpected keyword argument(s): " + ", ".join(
            k + (f" (did you mean {close[k][0]!r}?)" if close[k] else "") for k in left))


def command_line(verb: str, data, *objs, out=None) -> str | None:
    """The `fne VERB` command line of a run of these resolved options (`objs`: the verb's option
    dataclasses, as `fne.metrics.provenance` records them): DATA as given, each option set to
    other than its declared default by its flag (a `--no-NAME` switch where a default True was
    turned off), then `--out`; options the command line does not take (the Python API's ``threads``,
    ``chunk``, an inline class map) follow as a shell comment. None where DATA was given as an
    object (a `Dataset`), which no command line names.

    Parameters
    ----------
    verb : str
        ``fit`` or ``train``.
    data : str, Path or object
        DATA as the run was given it.
    *objs : dataclass instances
        The run's options; a field two of them share is taken from the first.
    out : str or Path, optional
        The run folder, where no option field holds it (fit's).

    Returns
    -------
    str or None
        The command, quoted for a POSIX shell (``shlex.join``).
    """
    import shlex

    if not isinstance(data, (str, os.PathLike)):
        return None
    args, api, seen = ["fne", verb, os.fspath(data)], [], {"data"}
    for obj in objs:
        for f, o in _opts(type(obj)):
            v, default = getattr(obj, f.name), f.default
            if f.name in seen or (default is not MISSING and (v == default or str(v) == str(default))):
                continue
            seen.add(f.name)
            if not o.cli or isinstance(v, (dict, list)):
                api.append(f"{f.name}={v!r}")
            elif isinstance(v, bool):
                args.append(flag(f))
            else:
                args += [flag(f), "/".join(map(str, v)) if isinstance(v, tuple) else os.fspath(v)
                         if isinstance(v, os.PathLike) else str(v)]
    if out is not None:
        args += ["--out", os.fspath(out)]
    return shlex.join(args) + (f"  # and, in Python only: {', '.join(api)}" if api else "")
