"""fne: transfer learning on images with cached full-network embeddings.

The Python API has the CLI's verbs: `fne.extract(...)`, `fne.fit(...)`, `fne.predict(...)`,
`fne.export(...)`, `fne.train(...)`, `fne.run(...)`, `fne.report(...)`, `fne.advise(...)`.
Verb modules are callable (``fne.extract(...)`` runs ``fne.extract.extract(...)``), so the
module and the verb share one name, and nothing heavy is imported until a verb is used.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"


class _VerbModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def verb_module(name: str) -> None:
    """Called at the end of a verb module: make `fne.<verb>(...)` call its function."""
    sys.modules[name].__class__ = _VerbModule


# verbs that live in a module of another name
_ELSEWHERE = {"run": "fne.runner"}
_VERBS = ("extract", "fit", "predict", "export", "train", "report", "advise")


def __getattr__(name: str):
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    if name in _VERBS:
        return importlib.import_module(f"fne.{name}")
    raise AttributeError(f"module 'fne' has no attribute {name!r}")
