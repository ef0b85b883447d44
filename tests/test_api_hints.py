"""The public verbs' type hints say what the verbs accept: no value a verb takes is outside its
parameter's annotation (`fne.report(run_dirs=("a", "b"))` worked, its hint said a list; `compile=True`
worked, its hint said str; `fne.train(resume="auto")` worked, its hint said bool)."""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import os
import types
import typing
from pathlib import Path

import pytest

import fne
import fne.options
from fne import option_handling as opts
from fne.errors import FneError

VERBS = [*fne._VERBS, *fne._FUNCTIONS]
OPTION_CLASSES = [c for c in vars(fne.options).values() if dataclasses.is_dataclass(c) and isinstance(c, type)
                  and any("opt" in f.metadata for f in dataclasses.fields(c))]
PROBES = (True, False, "auto", "on", 0, 1, 0.5, None)  # values a keyword might be given beyond its declaration


def _verb(name: str):
    f = getattr(fne, name)
    return getattr(f, name, f)  # a verb module calls its function


def _hint(func, annotation):
    """An annotation as written (a string, `from __future__ import annotations`) resolved in its
    module, the names it imports for type checking only given here."""
    if not isinstance(annotation, str):
        return annotation
    from fne.cache.spec import StoreSpec
    from fne.data.dataset import Dataset

    names = {**vars(typing), **vars(collections.abc), "Path": Path, "os": os, "Dataset": Dataset,
             "StoreSpec": StoreSpec, **vars(importlib.import_module(func.__module__)), **vars(fne.options)}
    return eval(annotation, names)  # noqa: S307 - an annotation of fne's own code


def admits(hint, v) -> bool:
    """Whether a value `v` is of type `hint`, as a type checker reads it: a union admits what one of
    its members does, a float admits an int (not a bool), a list[X] / tuple[X, ...] / Iterable[X]
    admits one whose items are X."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if hint is None or hint is type(None):
        return v is None
    if origin in (typing.Union, types.UnionType):
        return any(admits(a, v) for a in args)
    if origin is typing.Literal:
        return v in args
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if origin is not None:
        if not isinstance(v, origin):
            return False
        if origin is dict or not args:
            return True
        items = list(v)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(items) == len(args) and all(admits(a, x) for a, x in zip(args, items, strict=True))
        return all(admits(args[0], x) for x in items)
    return isinstance(v, hint)


def test_admits_tells_types_apart():
    """The checker below can fail: each case it should refuse, it refuses."""
    assert admits(str | None, None) and admits(float, 1) and not admits(float, True) and not admits(str, True)
    assert admits(list[str | Path], ["a", Path("b")]) and not admits(list[str], ("a",)) and not admits(list[str], [1])
    assert admits(collections.abc.Iterable[str], ("a",)) and admits(tuple[str, ...], ("a", "b"))
    assert admits(tuple[int, int], (1, 2)) and not admits(tuple[int, int], (1,)) and not admits(bool | None, "auto")


def _accepted(cls, name: str, v) -> bool:
    """Whether the options class `cls` takes the value `v` for its field `name`: built with it (the
    other fields at their defaults, a required one a plain string) and checked (`opts.check`) without
    a TypeError or OptionError."""
    required = {f.name: {"mode": "finetune"}.get(f.name, "x") for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name != name}
    try:
        opts.check(cls(**required, **{name: v}))
    except (TypeError, FneError):
        return False
    return True


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_option_declared_admits_its_default_choices_and_the_values_it_takes(cls):
    """Each option of fne.options, as the verbs' signatures show it (`option_handling.keywords`):
    its annotation admits its default, each of its declared choices, and every probe value its
    class takes when built and checked (compile=True: "on")."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        o = f.metadata.get("opt", fne.options.Opt())
        declared = ([] if f.default is dataclasses.MISSING else [f.default]) + list(o.choices or ())
        assert all(admits(hints[f.name], v) for v in declared), (f.name, hints[f.name], declared)
        taken = [v for v in PROBES if _accepted(cls, f.name, v)]
        assert [v for v in taken if not admits(hints[f.name], v)] == [], (cls.__name__, f.name, hints[f.name])


def test_the_verbs_keywords_admit_their_options_declared_values():
    """A verb's parameter named as an option of fne.options either carries that option's annotation
    (`option_handling.keywords`: the test above covers it) or one of its own, which admits the
    option's declared default and choices (`fne.run(device=None)`: str | None)."""
    declared: dict[str, list] = {}
    for cls in OPTION_CLASSES:
        for f in dataclasses.fields(cls):
            declared.setdefault(f.name, []).append(f)
    own = 0
    for name in VERBS:
        func = _verb(name)
        for p in inspect.signature(func).parameters.values():
            fields = declared.get(p.name, [])
            if not fields or p.annotation in {f.type for f in fields}:
                continue
            values = [v for f in fields for v in ([] if f.default is dataclasses.MISSING else [f.default])
                      + list(f.metadata["opt"].choices or ())]
            hint = _hint(func, p.annotation)
            assert [v for v in values if not admits(hint, v)] == [], (name, p.name, p.annotation)
            own += 1
    assert own > 0  # fne.run's device, workers, cache


class _Reached(Exception):
    """The verb got past its argument checks."""


def test_train_takes_resume_auto_and_its_hint_says_so(monkeypatch, tmp_path):
    """`fne.train(resume="auto")` (what `fne run` passes) gets through train's checks; its hint said bool."""
    from fne.training import train as T

    monkeypatch.setattr(T, "check_target", lambda *a, **k: (_ for _ in ()).throw(_Reached()))
    for v in ("auto", True, False):
        with pytest.raises(_Reached):
            fne.train("digits", "finetune", str(tmp_path / "o"), resume=v, arch="efficientnet_lite0", weights="random")
        assert admits(_hint(T.train, inspect.signature(T.train).parameters["resume"].annotation), v)
    with pytest.raises(TypeError, match="resume must be True, False or 'auto'"):
        fne.train("digits", "finetune", str(tmp_path / "o"), resume="yes", arch="efficientnet_lite0", weights="random")


def test_report_takes_any_iterable_of_run_folders_and_its_hint_says_so(tmp_path):
    """`fne.report` of a tuple (or a generator) of run folders reports them; its hint said a list."""
    from tests.test_report import fake_metrics, write_run

    runs = [write_run(tmp_path / "runs", n, fake_metrics(m, 0.9, 0.01, 0.9, 0.01)) for n, m in (("a", "fne+svm"),
                                                                                                ("b", "fc7+svm"))]
    hint = _hint(fne.report.report, inspect.signature(fne.report.report).parameters["run_dirs"].annotation)
    for given in (tuple(runs), [str(r) for r in runs], runs[0]):
        r = fne.report(given, tmp_path / "rep", figures=False)
        assert len(r["datasets"][0]["rows"]) == (2 if not isinstance(given, Path) else 1) and admits(hint, given)
    r = fne.report((d for d in runs), tmp_path / "rep", figures=False)
    assert len(r["datasets"][0]["rows"]) == 2
    extra = _hint(fne.report.report, inspect.signature(fne.report.report).parameters["extra_pipelines"].annotation)
    assert admits(extra, ()) and fne.report(runs, tmp_path / "rep", figures=False, extra_pipelines=())


def test_cache_rm_takes_a_tuple_of_names_and_its_hint_says_so(tmp_path):
    """`fne.cache_rm(("a*", "b*"), dry_run=True)` matches its patterns as a list's; its hint said a list."""
    from fne.cache.verbs import cache_rm

    hint = _hint(cache_rm, inspect.signature(cache_rm).parameters["stores"].annotation)
    for given in (("nothing*",), ["nothing*"], "nothing*", Path("nothing*")):
        with pytest.raises(FneError) as e:  # no such store: past the argument's type check
            fne.cache_rm(given, cache=str(tmp_path / "cache"), dry_run=True)
        assert not isinstance(e.value, TypeError) and admits(hint, given)
