"""How far a report's measurements name a winner (`winner_verdict`), and whether they agree with
the advice shown beside them (`advice_check`): the winner's kind of method against the advised
kinds, or where no row wins clearly, the best row of the advised kinds against the best of the
others (`_by_kind`)."""

from __future__ import annotations

import shlex

from fne.linear import compare
from fne.reporting.advice_rules import method_family
from fne.reporting.notes import said_once
from fne.reporting.render import pct, secs


def shown(col: str, v: float) -> str:
    """A value as the tables print it (render.pct / render.secs)."""
    return pct(v) if col in ("accuracy", "mean_class_accuracy") else secs(v)


def winner_verdict(rows: list[dict], test: str | None,
                   untested: str = "the runs were not scored on the same splits") -> dict:
    """How far the measurements name a winner: {"kind", "text"}. kind: "single" (one method, nothing
    to compare), "tie" (accuracies that read the same), "unclear" (the test, or without one the spread
    across splits, cannot tell the two best apart), "clear" (the test says so) or "untested" (no
    test applies and the lead exceeds the spread across splits; with no spread to judge it by, runs of
    one split each, the lead is "unclear"). The test (`compare.winner_vs_runner_up`): a paired
    one on shared test images, else Fisher's exact test for two runs of one split each; `untested`:
    why none applies (`compare.untested`)."""
    ranked = [r for r in rows if r["accuracy"] is not None and not r["partial"]]
    if not ranked:
        return {"kind": "none", "text": ""}
    w = ranked[0]
    if len(ranked) == 1:
        return {"kind": "single", "text": f"only one method was measured ({compare.row_name(w)}): nothing to compare it with"}
    tied = [compare.row_name(r) for r in ranked if shown("accuracy", r["accuracy"]) == shown("accuracy", w["accuracy"])]
    if len(tied) > 1:
        return {"kind": "tie", "text": f"no winner: {', '.join(tied)} tie at {100 * w['accuracy']:.1f} % accuracy"}
    if test is not None:
        return {"kind": "unclear" if test.startswith("no clear winner") else "clear", "text": test}
    second, lead = ranked[1], 100 * (w["accuracy"] - ranked[1]["accuracy"])
    spread = max((100 * r["accuracy_std"] for r in (w, second)
                  if r.get("accuracy_std") is not None and (r.get("n_splits") or 1) > 1), default=None)
    if spread is None:  # one split a row (or no spread recorded), and no test: nothing tells the lead from noise
        one = " on one split each, which gives" if all((r.get("n_splits") or 1) <= 1 for r in (w, second)) else ","
        return {"kind": "unclear", "text": f"no clear winner: {compare.row_name(w)} leads {compare.row_name(second)} by "
                                           f"{lead:.1f} points{one} no spread across splits to judge the lead by; no "
                                           f"paired test applies ({untested})"}
    if lead <= spread:
        return {"kind": "unclear", "text": f"no clear winner: {compare.row_name(w)} leads {compare.row_name(second)} by "
                                           f"{lead:.1f} points, within the spread across splits (± {spread:.1f}); "
                                           f"no paired test applies ({untested})"}
    return {"kind": "untested", "text": f"{compare.row_name(w)} leads {compare.row_name(second)} by {lead:.1f} points; no paired "
                                        f"test applies ({untested})"}


def advice_check(a: dict, winner: dict | None, verdict: str = "clear", rows: list[dict] = (),
                  metrics: dict | None = None) -> dict:
    a = {k: v for k, v in a.items() if not k.startswith("_")}
    if winner is not None:
        fam = method_family(winner["method"])
        a["winner"] = winner["method"]
        a["winner_family"] = fam
        a["matched"] = fam in (a.get("families") or [])  # of the advised kind
        a["named"] = advised_methods(a.get("commands") or [])
        a["matched_method"] = winner["method"] in a["named"]  # one of the methods its commands run
        a["verdict"] = verdict  # single / tie / unclear: the measurements do not test the advice...
        if verdict in ("tie", "unclear"):  # ...unless its kind's best row and the others' best tell apart
            a["by_kind"] = _by_kind(a.get("families") or [], rows, metrics or {})
    return a


def advised_methods(commands: list[str]) -> list[str]:
    """The methods an advice's commands run, named as their runs' metrics.json names them
    (`fne fit … --features fne --head svm`: fne+svm; `fne train … --mode finetune`: train:finetune)."""
    out = []
    for c in commands:
        words = shlex.split(c)
        opt = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
        if words[:2] == ["fne", "fit"] and "--features" in opt:
            out.append(f"{opt['--features']}+{opt.get('--head', 'svm')}")
        elif words[:2] == ["fne", "train"] and "--mode" in opt:
            out.append(f"train:{opt['--mode']}")
    return list(dict.fromkeys(out))


def _by_kind(families: list[str], rows: list[dict], metrics: dict) -> dict | None:
    """The best row of the advised kinds against the best row of the other kinds, tested as the
    winner is: {"matched", "best", "other", "text"} where one beats the other beyond noise, else None
    (fne+svm and last+svm tied at the top, both feature extraction, and train:finetune 19 points
    below: the measurements still match advice to extract features)."""
    ranked = [r for r in rows if r["accuracy"] is not None and not r["partial"]]
    ours = next((r for r in ranked if method_family(r["method"]) in families), None)
    theirs = next((r for r in ranked if method_family(r["method"]) not in families), None)
    if ours is None or theirs is None:
        return None
    pair = [r for r in ranked if r is ours or r is theirs]
    v = winner_verdict(pair, compare.winner_vs_runner_up(pair, metrics))
    if v["kind"] != "clear":
        return None
    best, other, text = said_once([pair[0]["label"], pair[1]["label"], v["text"][v["text"].find("beyond noise"):]], pair)
    return {"matched": pair[0] is ours, "best": best, "other": other, "text": text}  # a row's note said once
