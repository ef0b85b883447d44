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


# the verbs whose call imports torch whatever it is given (their modules import it inside the
# call), as the command line does for them: the others import it where they need it, held there
_TORCH_AT_ONCE = ("run", "advise")


def __getattr__(name: str):
    if name not in _FUNCTIONS and name not in _VERBS:
        raise AttributeError(f"module 'fne' has no attribute {name!r}")
    # The API's first import of torch is here (fne.extract, fne.train, fne.load import it with their
    # module): a Ctrl-C inside it can pass through torch's C++ initialisation, which aborts the process
    # (a notebook's kernel dies). Held, it is raised as KeyboardInterrupt once the import is done.
    imported = importlib.import_module("fne.handoff").imported  # loaded on first use, as the verbs are

    if name in _TORCH_AT_ONCE:
        imported("torch")
    module = imported(_FUNCTIONS.get(name) or _VERBS[name])
    return module if name in _VERBS and name != "run" else getattr(module, name)  # run: its module is the runner
