"""The sections of `fne report`: one per task, what the runs classified (`compare.run_tasks`: DATA
resolved, or a copy of the same images and labels, and its `--label-key`), named by the runs'
dataset name. Runs of one DATA given under other names (a symlink to it, a copy in a folder of
another name) are one section, named once and the other names said in its `names_note`; runs of
one name that read other DATA are sections apart, DATA beside the name."""

from __future__ import annotations

from collections import Counter, defaultdict

from fne.linear import compare


def dataset_key(run: dict) -> str:
    """A run's dataset name: its pipeline step's dataset key (step.json), else metrics.json's dataset."""
    return str(run["step"].get("dataset_key") or run["metrics"].get("dataset") or "?")


def dataset_keys(runs: list[dict]) -> list[str]:
    """Each run's section, as the report names it: the dataset name of the runs of its task
    (`_names`), and where runs of one name read other DATA (two folders both called `images`), or
    other labels of it (`compare.run_task`), that DATA beside it, so that different images or
    labels are never tabulated, ranked or tested together. A run that records no DATA (an old
    run) keeps its plain name; one that records DATA as given only (`compare.run_tasks`) joins
    the runs that resolved that DATA, under its own name."""
    of = [str(task or "") for task in compare.run_tasks([r["metrics"] for r in runs])]
    names = _names(runs, of)
    data: dict[str, set[str]] = defaultdict(set)
    for name, d in zip(names, of, strict=True):
        if d:
            data[name].add(d)
    return [f"{name} ({d})" if d and len(data[name]) > 1 else name for name, d in zip(names, of, strict=True)]


def _names(runs: list[dict], of: list[str]) -> list[str]:
    """Each run's dataset name, one per task: runs that resolved DATA (metrics.json's data_resolved;
    a symlink resolves to its target, a copy of the same images and labels joins the first,
    `compare.run_tasks`) under several names take the name of its pipeline step (step.json's dataset
    key), else the name most of them have (of equal counts, the first in order). A task of two
    pipeline dataset keys (one DATA, two subsets: `max_per_class`) keeps each run's name; so does
    a run that records no resolved DATA (an old run: its DATA as given could be any folder)."""
    given: dict[str, Counter] = defaultdict(Counter)
    steps: dict[str, set[str]] = defaultdict(set)
    for r, d in zip(runs, of, strict=True):
        if d and r["metrics"].get("data_resolved"):
            given[d][dataset_key(r)] += 1
            steps[d] |= {str(r["step"]["dataset_key"])} if r["step"].get("dataset_key") else set()
    chosen = {d: (next(iter(steps[d])) if steps[d] else min(c, key=lambda n: (-c[n], n)))
              for d, c in given.items() if len(c) > 1 and len(steps[d]) < 2}
    return [chosen.get(d, dataset_key(r)) if r["metrics"].get("data_resolved") else dataset_key(r)
            for r, d in zip(runs, of, strict=True)]


def names_note(runs: list[dict]) -> str | None:
    """A sentence where the runs of a section were given its DATA under other names (a symlink,
    a copy elsewhere): the names, each with DATA as its runs gave it; None where all have one name."""
    given: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        given[dataset_key(r)].add(str(r["metrics"].get("data") or "?"))
    if len(given) < 2:
        return None
    return ("The same images, given under other names (a link to DATA or a copy of it: one resolved folder, or the "
            "same images and labels), are one section: " + "; ".join(
                f"{name} ({', '.join(sorted(data))})" for name, data in sorted(given.items())) + ".")
