"""Every torchvision classification model and one timm model per family, swept (by hand, not a test).

Each backbone is built as fne builds it (`backbones.get` + `load_backbone(..., "random", seed=0)`,
nothing downloaded), in channels-last as extraction runs it, and fne's TapModel runs one batch of
two images at the smallest input it accepts (64 pixels, else the model's own crop size). Then:

* every tap against an independent forward hook on the module it names (tests/test_zoo.py's
  `_reference`, pooling written out there), and `last` against the classifier's actual input;
* every tap fires once and before the classifier;
* the layout each tap's pooling assumes, against the shapes of a dry run on the meta device at
  twice the size: the axes that grow are spatial, the one that stays is the channel axis; for
  tokens, the number of prefix tokens solved from the two token counts (or, for a model that
  takes one size only, the patch tokens must make a square grid).

timm families are timm's modules (`timm.list_modules()`): the model of each with the fewest
parameters (counted on the meta device), plus EXTRA variants (registers, no class token, average
or attention pooling, distilled heads). Models over --max-params parameters are skipped and listed.
One thread; each model freed after use. Example:

    python benchmarks/sweep_zoo.py --json /tmp/zoo.json --markdown /tmp/zoo.md
    python benchmarks/sweep_zoo.py --only timm:cait_xxs24_224 --only swin_t
    python benchmarks/sweep_zoo.py --discover-only --json /tmp/after.json --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fne.backbones import registry as backbones  # noqa: E402
from fne.backbones import zoo  # noqa: E402
from fne.backbones.pooling import pool as backbones_pool  # noqa: E402
from fne.extraction.taps import TapModel  # noqa: E402
from tests.test_zoo import _reference  # noqa: E402

# timm variants beyond one model per module: prefix tokens and pooling of every kind
EXTRA = ["vit_small_patch14_reg4_dinov2", "vit_medium_patch16_gap_256", "vit_betwixt_patch16_reg4_gap_256",
         "vit_base_patch16_siglip_224", "vit_small_patch16_224", "vit_base_patch16_clip_quickgelu_224",
         "deit_tiny_distilled_patch16_224", "deit3_small_patch16_224", "eva02_tiny_patch14_224",
         "cait_xxs24_224", "swinv2_cr_tiny_ns_224", "coatnet_nano_rw_224", "maxvit_nano_rw_256",
         "convnextv2_atto", "mobilenetv4_conv_small", "mobilenetv3_small_050", "caformer_s18",
         "poolformer_s12", "efficientnet_b0", "regnetx_002", "resnetv2_18", "nf_resnet26", "dm_nfnet_f0",
         "repvgg_a0", "vit_small_r26_s32_224", "levit_128s", "crossvit_tiny_240", "xcit_nano_12_p16_224",
         "pit_ti_distilled_224", "beitv2_base_patch16_224", "flexivit_small", "samvit_base_patch16"]


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("over the per-model time limit")


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160] if msg else ''}"


def params_on_meta(build) -> int:
    model = zoo.meta_model(build)
    return sum(p.numel() for p in model.parameters())


def timm_picks(max_params: float) -> tuple[list[str], dict[str, int]]:
    """The smallest model of each timm module (buildable, <= max_params), then EXTRA."""
    import timm

    picks, sizes = [], {}
    for module in timm.list_modules():
        best = None
        for name in timm.list_models(module=module):
            try:
                n = params_on_meta(zoo.timm_build(name))
            except Exception:
                continue
            if best is None or n < best[1]:
                best = (name, n)
        if best is not None:
            picks.append(best[0])
            sizes[best[0]] = best[1]
    picks += [n for n in EXTRA if timm.is_model(n) and n not in picks]
    return ["timm:" + n for n in picks], sizes


def fired_order(model, b) -> dict:
    """Register hooks recording how often, and when, each tap's module and the classifier fire."""
    log: dict[str, list[int]] = {}
    counter = [0]
    handles = []
    names = {t.module for t in b.taps} | {b.classifier}
    for n in names:
        def rec(*a, n=n):
            counter[0] += 1
            log.setdefault(n, []).append(counter[0])
            if n == b.classifier:
                x = a[1][0]
                log["<classifier reads>"] = (x.dim(), x.detach().float().clone())
        m = model.get_submodule(n)
        handles.append(m.register_forward_pre_hook(rec) if n == b.classifier else m.register_forward_hook(rec))
    return log, handles


def layout_problems(b, size: int) -> list[str]:
    """Compare each tap's pooling with the shapes of dry runs (meta device) at `size` and 2x."""
    model = zoo.meta_model(lambda: b.build(b.num_classes))
    shapes = []
    for s in (size, 2 * size):
        try:
            ev = zoo._trace(model, torch.zeros(2, 3, s, s, device="meta"))
        except Exception:
            shapes.append(None)
            continue
        shapes.append({n: sh for k, n, sh in ev if k == "post"})
    one, two = shapes
    bad = []
    for t in b.taps:
        if t.on_input or one is None or t.module not in one:
            continue
        a = one[t.module]
        if t.pool in ("mean_nchw", "mean_nhwc") and len(a) == 4:
            if two is None or len(two.get(t.module, ())) != 4:
                continue
            fixed = [i for i in (1, 2, 3) if a[i] == two[t.module][i]]
            want = 1 if t.pool == "mean_nchw" else 3
            if len(fixed) == 3:  # a map of one size at any input (pooled to 1x1, resized): no telling
                continue
            if fixed != [want]:
                bad.append(f"{t.name}: {t.pool} on {a} -> {two[t.module]}")
        elif t.pool in ("cls", "mean_tokens"):
            if len(a) != 3 or a[2] != t.channels:
                bad.append(f"{t.name}: {t.pool} on {a}")
                continue
            if two is not None and len(two.get(t.module, ())) == 3 and two[t.module][1] != a[1]:
                p = (4 * a[1] - two[t.module][1]) / 3  # N - p patch tokens, 4x as many at 2x the size
                if p != t.prefix_tokens:
                    bad.append(f"{t.name}: prefix_tokens {t.prefix_tokens}, tokens {a[1]} -> "
                               f"{two[t.module][1]}: {p:g} prefix")
            elif math.isqrt(a[1] - t.prefix_tokens) ** 2 != a[1] - t.prefix_tokens:
                bad.append(f"{t.name}: {a[1]} tokens - {t.prefix_tokens} prefix is no square grid")
            if t.pool == "cls" and t.prefix_tokens == 0:
                bad.append(f"{t.name}: cls with no prefix token")
    return bad


def whole_stages(b) -> list[str]:
    """Taps on a module that holds two or more blocks in a container of its own: a stage tapped
    once, not block by block (not wrong, but coarser than the README's rule)."""
    model = zoo.meta_model(lambda: b.build(b.num_classes))
    out = []
    for t in b.taps:
        if t.on_input:
            continue
        m = model.get_submodule(t.module)
        held = [k for c in m.children() if zoo._is_container(c) for n, k in c.named_children() if zoo._block_like(n, k)]
        if len(held) >= 2:
            out.append(t.module)
    return list(dict.fromkeys(out))


def check(arch: str, max_params: float, timeout: int, forward: bool = True) -> dict:
    row = {"arch": arch, "status": "error", "taps": 0, "dim": 0, "size": 0, "params": 0, "message": "",
           "stages": ""}
    t0 = time.perf_counter()
    signal.alarm(timeout)
    model = tap = None
    try:
        b = backbones.get(arch)
        row.update(taps=len(b.taps), dim=b.dim, last=b.last,
                   tap_list=[[t.name, t.module, t.channels, t.pool, t.prefix_tokens] for t in b.taps])
        row["params"] = params_on_meta(lambda: b.build(b.num_classes))
        stages = whole_stages(b)
        row["stages"] = f"{len(stages)} tap(s) on a module holding 2+ blocks: {', '.join(stages[:3])}" if stages else ""
        if not forward:
            row.update(status="discovered")
            return row
        if row["params"] > max_params:
            row.update(status="skipped", message=f"{row['params'] / 1e6:.0f}M parameters")
            return row
        model = backbones.load_backbone(arch, "random", seed=0).to(memory_format=torch.channels_last)
        tap = TapModel(model, b).eval()
        got = None
        for size in dict.fromkeys([min(64, b.input_size), b.input_size]):
            x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
            try:
                with torch.no_grad():
                    got = tap(x)
                break
            except Exception:
                if size == b.input_size:
                    raise
        row["size"] = size
        log, handles = fired_order(model, b)
        want = _reference(model, b, tap.norm(x).contiguous(memory_format=torch.channels_last))
        for h in handles:
            h.remove()
        bad = []
        for t, g in zip(b.taps, got):
            w = want[t.name]
            if g.shape != (2, t.channels) or w.shape != g.shape:
                bad.append(f"{t.name}: shape {tuple(g.shape)} / hook {tuple(w.shape)}, declared {t.channels}")
            elif not torch.isfinite(g).all():
                bad.append(f"{t.name}: not finite")
            elif ((g - w).norm() / w.norm().clamp_min(1e-12)).item() > 1e-3:
                bad.append(f"{t.name}: differs from its hook")
        clf = log.get(b.classifier, [])
        for t in b.taps:
            fires = log.get(t.module, [])
            if len(fires) != 1:
                bad.append(f"{t.name}: its module ran {len(fires)} times")
            elif clf and fires[0] > clf[0] and not t.on_input:
                bad.append(f"{t.name}: after the classifier")
        last = got[[t.name for t in b.taps].index(b.last)]
        w = want["<classifier input>"]
        if log["<classifier reads>"][0] == 4:  # a map (a 1x1 conv classifier; an Identity head): pooled
            w = backbones_pool(b.tap(b.last).pool, log["<classifier reads>"][1])
        if last.shape != w.shape or ((last - w).norm() / w.norm().clamp_min(1e-12)).item() > 1e-3:
            bad.append(f"last ({b.last}, {tuple(last.shape)}) is not the classifier's input {tuple(w.shape)}")
        bad += layout_problems(b, size)
        row.update(status="mismatch" if bad else "ok", message="; ".join(bad[:4]) + (
            f" (+{len(bad) - 4})" if len(bad) > 4 else ""))
    except Exception as e:
        row["message"] = one_line(e)
    finally:
        signal.alarm(0)
        del model, tap
        gc.collect()
        row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def changed(rows: list[dict], before: Path) -> list[str]:
    """Models whose taps (name, module, channels, pool, prefix tokens) or `last` differ from those of
    an earlier run's --json (with or without --discover-only); models it does not hold are left out."""
    old = {r["arch"]: r for r in json.loads(before.read_text())}
    key = ("tap_list", "last")
    return [f"{r['arch']}: {old[r['arch']]['taps']} -> {r['taps']} taps, dim {old[r['arch']]['dim']} -> {r['dim']}, "
            f"last {old[r['arch']].get('last')} -> {r.get('last')}"
            for r in rows if r["arch"] in old and any(old[r["arch"]].get(k) != r.get(k) for k in key)]


def markdown(rows: list[dict], skipped_note: str) -> str:
    out = ["| arch | status | taps | dim | input | s | what |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] not in ("ok", "discovered") or r["stages"]:
            what = "; ".join(filter(None, [r["message"], r["stages"]])).replace("|", "/")
            out.append(f"| {r['arch']} | {r['status']} | {r['taps']} | {r['dim']} | {r['size']} | "
                       f"{r['seconds']} | {what} |")
    return "\n".join(out) + "\n" + skipped_note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help="these archs only (repeatable)")
    ap.add_argument("--no-torchvision", action="store_true")
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--max-params", type=float, default=300e6)
    ap.add_argument("--timeout", type=int, default=240, help="seconds per model")
    ap.add_argument("--discover-only", action="store_true", help="taps and the stage note only, no forward")
    ap.add_argument("--json", type=Path, help="rows, each with its taps (so that two runs can be compared)")
    ap.add_argument("--compare", type=Path, help="an earlier run's --json: list the models whose taps differ")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    archs = list(args.only)
    if not archs:
        if not args.no_torchvision:
            archs += zoo.tv_names()
        if not args.no_timm:
            archs += timm_picks(args.max_params)[0]
        print(f"{len(archs)} models, chosen in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    print(f"{'arch':44} {'status':9} {'taps':>4} {'dim':>6} {'in':>4} {'s':>6}  what", flush=True)
    for arch in archs:
        r = check(arch, args.max_params, args.timeout, forward=not args.discover_only)
        rows.append(r)
        print(f"{arch:44} {r['status']:9} {r['taps']:4d} {r['dim']:6d} {r['size']:4d} {r['seconds']:6.1f}  "
              f"{'; '.join(filter(None, [r['message'], r['stages']]))}", flush=True)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "mismatch", "error", "skipped", "discovered")}
    counts["with taps on modules holding blocks"] = sum(bool(r["stages"]) for r in rows)
    note = (f"\n{len(rows)} models: " + ", ".join(f"{v} {k}" for k, v in counts.items())
            + f"; {time.perf_counter() - t0:.0f} s in all.\n")
    print(note)
    if args.compare:
        diff = changed(rows, args.compare)
        print(f"{len(diff)} of {len(rows)} models tapped otherwise than in {args.compare}:", *diff, sep="\n  ")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(rows, note))


if __name__ == "__main__":
    main()
