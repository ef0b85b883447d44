"""What computing a store's rows cost, from its extraction records (`Store.records`).

Every `fne extract` that computed rows writes one record of its own (`records/<time>-<pid>.json`,
written whole, so concurrent extractions, shards and torchrun ranks never share a file): the
images it computed, the seconds of its run phase (first batch asked for to last part committed),
its device, batch size and precision, and, since 29 Nov 2026, the parts it committed. A fit on
cached rows charges each of its rows to the run that committed the part the row is read from, at
that run's seconds per image; rows in a part no record names (a run recorded before records named
their parts, or one interrupted before its record) at the store's mean seconds per image.
"""

from __future__ import annotations

from collections.abc import Iterable

from fne.cache.store import Store

__all__ = ["rows_cost"]


def _run_seconds(r: dict) -> float | None:
    """A record's run-phase seconds (its whole wall time where it lacks stage seconds)."""
    s = (r.get("stage_seconds") or {}).get("run", r.get("seconds"))
    return float(s) if isinstance(s, (int, float)) and s >= 0 else None


def _runs(records: list[dict]) -> list[dict]:
    """The extraction records that computed rows and say how long they took."""
    return [r for r in records if r.get("kind") == "extract" and isinstance(r.get("n_computed"), int)
            and r["n_computed"] > 0 and _run_seconds(r) is not None]


def _names(values: Iterable) -> list:
    return sorted({v for v in values if v is not None}, key=str)


def rows_cost(store: Store, keys: Iterable[str]) -> dict | None:
    """The seconds that computing the stored rows of `keys` cost, as the store's records say.

    Parameters
    ----------
    store : Store
        The store the rows are read from.
    keys : iterable of str
        Content keys of the rows used (repeats count once; keys without a row are left out).

    Returns
    -------
    dict or None
        ``seconds`` and ``images`` (the rows charged), ``measured_images`` (charged to the run
        that committed them, at its seconds per image) and ``estimated_images`` (at the store's
        mean seconds per image), ``basis`` ("runs", "store rate" or "runs and store rate"),
        ``runs`` (how many runs were charged), ``devices``, ``batch_sizes``, ``precisions``,
        ``first`` and ``last`` dates, and ``note``, one sentence saying all this. None where the
        store records no extraction that computed rows (a store written before records were kept).
    """
    runs = _runs(store.records())
    index = store.index()
    by_part: dict[str, int] = {}
    for k in set(keys) & index.keys():
        by_part[index[k][0]] = by_part.get(index[k][0], 0) + 1
    if not runs or not by_part:
        return None
    owner = {p: r for r in runs if isinstance(r.get("parts"), list) for p in r["parts"] if isinstance(p, str)}
    charged: dict[int, tuple[dict, int]] = {}
    estimated = 0
    for part, n in by_part.items():
        if part in owner:
            r = owner[part]
            charged[id(r)] = (r, charged.get(id(r), (r, 0))[1] + n)
        else:
            estimated += n
    rate = sum(_run_seconds(r) for r in runs) / sum(r["n_computed"] for r in runs)
    seconds = sum(_run_seconds(r) / r["n_computed"] * n for r, n in charged.values()) + rate * estimated
    measured = sum(n for _, n in charged.values())
    charged_runs = [r for r, _ in charged.values()] or runs  # estimated alone: the store's runs set the rate
    dates = _names((r.get("provenance") or {}).get("date") for r in charged_runs)
    basis = "runs" if not estimated else "store rate" if not measured else "runs and store rate"
    out = {"seconds": seconds, "images": measured + estimated, "measured_images": measured,
           "estimated_images": estimated, "basis": basis, "runs": len(charged),
           "devices": _names(r.get("device") for r in charged_runs),
           "batch_sizes": _names(r.get("batch_size") for r in charged_runs),
           "precisions": _names(r.get("precision") for r in charged_runs),
           "first": dates[0] if dates else None, "last": dates[-1] if dates else None}
    out["note"] = _note(out, len(runs))
    return out


def _note(c: dict, n_runs: int) -> str:
    """One sentence: what the figure is and where it comes from."""
    when = "" if not c["first"] else f" on {c['first'][:10]}" if c["first"][:10] == c["last"][:10] else \
        f" from {c['first'][:10]} to {c['last'][:10]}"
    how = (f"the run phase of the {c['runs']} fne extract run(s) that computed them, at each run's seconds per image"
           if c["basis"] == "runs" else
           f"the store's mean seconds per image over its {n_runs} recorded fne extract run(s) (no record names "
           f"the parts these rows are in)" if c["basis"] == "store rate" else
           f"{c['measured_images']} at the seconds per image of the {c['runs']} run(s) that computed them, "
           f"{c['estimated_images']} at the store's mean over its {n_runs} recorded run(s) (no record names their parts)")
    return (f"extract_seconds from the store: {c['seconds']:.1f} s for {c['images']} images computed on "
            f"{', '.join(map(str, c['devices'])) or 'an unrecorded device'}{when} "
            f"(batch {', '.join(map(str, c['batch_sizes'])) or '?'}, {', '.join(map(str, c['precisions'])) or '?'}; "
            f"{how}), by an earlier extraction, not by this run")
