"""fne: transfer learning on images with cached full-network embeddings.

The Python API has the CLI's verbs: `fne.extract(...)`, `fne.fit(...)`, `fne.predict(...)`,
`fne.export(...)`, `fne.train(...)`, `fne.run(...)`, `fne.report(...)`, `fne.advise(...)`;
`fne.cache_info(...)`, `fne.cache_verify(...)`, `fne.cache_rm(...)` (`fne cache info / verify / rm`),
`fne.list_backbones()` and `fne.describe_backbone(...)` (`fne backbones`); and `fne.load_rows(...)`:
DATA's cached rows as numpy arrays in memory (X, y, ids), no file; and `fne.load(RUN_DIR)`: a run's
model loaded once, scoring images in memory (`predict`, `decision_function`, `predict_proba`).
Verb modules are callable (``fne.extract(...)`` runs ``fne.extract.extract(...)``), so the
module and the verb share one name, and nothing heavy is imported until a verb is used. A verb's
keywords are its command's options, same names, same defaults: ``help(fne.fit)`` lists them.
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


# verb -> the module that defines it (each stage's subpackage)
_VERBS = {
    "extract": "fne.extraction.extract",
    "fit": "fne.linear.fit",
    "predict": "fne.linear.predict",
    "export": "fne.linear.export",
    "train": "fne.training.train",
    "run": "fne.pipeline.runner",
    "report": "fne.reporting.report",
    "advise": "fne.reporting.advise",
}

# the API's other functions -> their module: `fne cache info / verify / rm` and `fne backbones`
# (fne.cache and fne.backbones are subpackages), and load_rows and load, which no command has
_FUNCTIONS = {"load_rows": "fne.linear.export", "load": "fne.loaded",
              "cache_info": "fne.cache.verbs", "cache_verify": "fne.cache.verbs", "cache_rm": "fne.cache.verbs",
              "list_backbones": "fne.backbones.catalog", "describe_backbone": "fne.backbones.catalog"}


def __getattr__(name: str):
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    if name == "run":  # the runner module is not named after its verb
        return getattr(importlib.import_module(_VERBS[name]), name)
    if name in _VERBS:
        return importlib.import_module(_VERBS[name])
    raise AttributeError(f"module 'fne' has no attribute {name!r}")
