"""`fne` command line: a thin argparse layer over the Python API of the same verbs.

Each verb has its own `_add_<verb>` function; user mistakes (FneError) print one line and
exit 2, Ctrl-C exits 130 after the verb has kept what it committed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings


def _store_args(p: argparse.ArgumentParser, extraction: bool = True) -> None:
    """Options that pick the activation store (shared by extract, fit, export)."""
    from fne.backbones.registry import ARCH_HELP, WEIGHTS_HELP
    from fne.names import CROPS, DECODERS, PRECISIONS, STORAGE_DTYPES

    p.add_argument("--arch", default="vgg16", help=ARCH_HELP)
    p.add_argument("--weights", default="imagenet", help=WEIGHTS_HELP)
    p.add_argument("--crop", default="center", choices=CROPS,
                   help="center: shorter side 256, center 224 (default); squash: 224x224; ten: 10 crops")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto (default): extraction picks the machine's fastest; reading finds rows "
                        "of any precision. A value pins the store.")
    p.add_argument("--storage-dtype", default="auto", choices=["auto", *STORAGE_DTYPES],
                   help="how cached activations are stored; auto (default): float16 when extracting, "
                        "any stored precision when reading (see README, 'Which store is read')")
    p.add_argument("--cache", default=None, help="cache folder (default: $FNE_CACHE, else `fne cache info`)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--seed-weights", type=int, default=0, dest="weights_seed",
                   help="seed of --weights random")
    if extraction:
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores/2)")
        p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                       help="torch.compile the network; auto: only for runs large enough to repay it")
        p.add_argument("--decode", default="pil", choices=DECODERS,
                       help="pil: decode in workers (default); device: JPEG decode on the GPU (nvjpeg)")


def _store_kwargs(a: argparse.Namespace) -> dict:
    return dict(arch=a.arch, weights=a.weights, crop=a.crop, precision=a.precision,
                storage_dtype=a.storage_dtype, cache=a.cache, device=a.device, weights_seed=a.weights_seed)


def _extract_kwargs(a: argparse.Namespace) -> dict:
    compile_ = {"on": True, "off": False}.get(a.compile, a.compile)
    return dict(batch_size=a.batch_size, workers=a.workers, compile=compile_)


# ----------------------------------------------------------------- extract
def _add_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="image folder, CSV, HDF5, folder of train.h5/test.h5, or 'digits'")
    _store_args(p)
    p.add_argument("--shard", default=None,
                   help="I/N: process a deterministic 1/N of DATA (slurm arrays; default under torchrun: "
                        "RANK/WORLD_SIZE)")
    p.add_argument("--retry-bad", action="store_true",
                   help="read again the images recorded as unreadable (after a transient failure)")
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(a) -> int:
    from fne.data.shards import parse_shard, shard_from_env
    from fne.extraction.extract import extract

    # Only `fne extract` reads torchrun's RANK / WORLD_SIZE: no other verb shards implicitly.
    shard = parse_shard(a.shard) if a.shard else shard_from_env()
    r = extract(a.data, **_store_kwargs(a), **_extract_kwargs(a), shard=shard, decode=a.decode,
                retry_bad=a.retry_bad)
    named = " (each named above)" if r.n_skipped else ""
    print(f"{r.n_images} images ({r.n_unique} unique): {r.n_cached} already cached, "
          f"{r.n_computed} computed at {r.images_per_s:.1f} img/s, {r.n_skipped} skipped{named}")
    print(f"store: {r.store}")
    return 0


# --------------------------------------------------------------------- fit
def _stream_arg(p) -> None:
    p.add_argument("--stream-chunk", type=int, default=1024, metavar="ROWS",
                   help="rows read from the cache at a time: memory follows this, not the dataset (default 1024)")


def _add_fit(p: argparse.ArgumentParser) -> None:
    from fne.names import HEADS

    p.add_argument("data")
    p.add_argument("--features", default="fne", help="fne, fc6, fc7, last, LAYER,... (L2-normalised), or auto (cross-validated)")
    p.add_argument("--head", default="svm", choices=[*HEADS, "auto"],
                   help="auto: svm or logreg, whichever cross-validates better")
    p.add_argument("--C", default="1.0", help="regularisation (default 1.0) or 'auto' (k-fold CV on the training images)")
    p.add_argument("--splits", type=int, default=5, help="random stratified splits when DATA has no split")
    p.add_argument("--test-size", type=float, default=0.25)
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder for metrics.json and model.joblib")
    p.add_argument("--extract", action="store_true", help="extract rows missing from the cache first")
    p.add_argument("--solver", default="auto", choices=["auto", "sklearn", "torch"],
                   help="svm/logreg solver: torch (L-BFGS over streamed rows, on --device) or sklearn; "
                        "auto (default): torch above a measured size (fne.linear.solver.CPU_TORCH_ABOVE)")
    _stream_arg(p)
    _store_args(p)
    p.set_defaults(func=_cmd_fit)


def _cmd_fit(a) -> int:
    from fne.linear.fit import fit

    m = fit(a.data, features=a.features, head=a.head, C=a.C, splits=a.splits, test_size=a.test_size,
            train_per_class=a.train_per_class, seed=a.seed, out=a.out, extract_missing=a.extract,
            stream_chunk=a.stream_chunk, solver=a.solver, **_store_kwargs(a), **_extract_kwargs(a))
    print(f"{m['method']} on {m['dataset']}: accuracy {m['accuracy']:.4f} ± {m['accuracy_std']:.4f}, "
          f"mean class accuracy {m['mean_class_accuracy']:.4f} ({m['n_splits']} split(s), "
          f"n_train {m['n_train']}, n_test {m['n_test']}, fit {m['fit_seconds']:.1f} s)")
    print(f"wrote {a.out}/metrics.json and {a.out}/model.joblib")
    return 0


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("data")
    p.add_argument("--out", required=True, help="predictions CSV")
    p.add_argument("--cache", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a) -> int:
    from fne.linear.predict import predict

    r = predict(a.run_dir, a.data, out=a.out, cache=a.cache, device=a.device,
                batch_size=a.batch_size, workers=a.workers)
    acc = f", accuracy {r['accuracy']:.4f}" if r.get("accuracy") is not None else ""
    print(f"wrote {r['n']} predictions to {a.out}{acc}")
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("data")
    p.add_argument("--features", default="fne")
    p.add_argument("--out", required=True, help="FILE.h5")
    p.add_argument("--extract", action="store_true", help="extract rows missing from the cache first")
    _stream_arg(p)
    _store_args(p)
    p.set_defaults(func=_cmd_export)


def _cmd_export(a) -> int:
    from fne.linear.export import export

    r = export(a.data, features=a.features, out=a.out, extract_missing=a.extract,
               stream_chunk=a.stream_chunk, **_store_kwargs(a), **_extract_kwargs(a))
    print(f"wrote {r['n']} rows ({', '.join(r['datasets'])}) to {a.out}")
    return 0


def _add_cache(p: argparse.ArgumentParser) -> None:
    csub = p.add_subparsers(dest="cache_cmd", required=True)
    info = csub.add_parser("info", help="list stores: key, rows, size")
    info.add_argument("--cache", default=None)
    info.set_defaults(func=_cmd_cache_info)
    ver = csub.add_parser("verify", help="check stores' integrity")
    ver.add_argument("store", nargs="?", default=None, help="one store folder (default: all)")
    ver.add_argument("--cache", default=None)
    ver.add_argument("--clean", action="store_true",
                     help="remove unfinished parts of interrupted runs (live writers' are spared) and move "
                          "damaged parts to quarantine/")
    ver.set_defaults(func=_cmd_cache_verify)


def _cmd_cache_info(a) -> int:
    from fne.cache.store import cache_root, list_stores

    stores = list_stores(a.cache)
    print(f"cache root: {cache_root(a.cache)}")
    if not stores:
        print("no stores")
    for s in stores:
        m = s.meta
        print(f"{s.path.name}\n  arch {m['arch']}  weights {m['weights']}  preprocess {m['preprocess']}  "
              f"precision {m['precision']}  dtype {m['dtype']}\n  rows {len(s)}  bad {len(s.bad())}  "
              f"parts {len(s.parts())}  size {s.size_bytes() / 2**20:.1f} MiB")
    return 0


def _cmd_cache_verify(a) -> int:
    from fne.cache.store import Store, list_stores

    stores = [Store.at(a.store)] if a.store else list_stores(a.cache)
    bad = 0
    for s in stores:
        if a.clean:
            print(f"{s.path.name}: removed {s.clean()} unfinished part(s) of interrupted runs")
            for name in s.quarantine_damaged():
                print(f"{s.path.name}: damaged part {name} moved to {s.path / 'quarantine' / name}; "
                      f"`fne extract` recomputes its rows")
        problems = s.verify()
        bad += bool(problems)
        dup = f", {s.duplicates} duplicate rows (reads use the first)" if s.duplicates else ""
        print(f"{s.path.name}: {'OK' if not problems else 'PROBLEMS'} ({len(s)} rows{dup})")
        for msg in problems:
            print(f"  - {msg}")
        if s.leftovers:
            print(f"  note: {len(s.leftovers)} unfinished part(s) left by interrupted runs (never read; "
                  f"--clean removes them)")
    return 1 if bad else 0


def _add_backbones(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", nargs="?", default=None, help="a registry name, torchvision model name or timm:NAME")
    p.add_argument("--weights", default="imagenet", help="weights whose preprocessing to show (default imagenet)")
    p.add_argument("--json", action="store_true", help="print the taps and preprocessing as JSON")
    p.set_defaults(func=_cmd_backbones)


def _cmd_backbones(a) -> int:
    import json

    from fne.backbones import registry as backbones

    if a.arch is None:
        for name in sorted(backbones.REGISTRY):
            b = backbones.REGISTRY[name]
            print(f"{name:20s} {len(b.taps):3d} taps, {b.dim:6d} features, last {b.last}")
        print(f"\nother backbones by name: {backbones.how_to_name()}")
        return 0
    d = backbones.get(a.arch, a.weights).describe()
    if a.json:
        print(json.dumps(d, indent=1))
        return 0
    print(f"{d['arch']} ({d['source']}): {len(d['taps'])} taps, {d['dim']} features, last {d['last']}, "
          f"classifier {d['classifier']}")
    print("preprocess: " + ", ".join(f"{k} {v}" for k, v in d["preprocess"].items()))
    for t in d["taps"]:
        print(f"  {t['name']:40s} {t['module']:36s} {t['channels']:6d} {t['pool']}"
              + (f" (prefix tokens {t['prefix_tokens']})" if t["pool"] in ("cls", "mean_tokens") else ""))
    return 0


# ------------------------------------------------------------------ the verbs
def _module_verb(module: str):
    """A verb whose module declares its own options (add_arguments) and runs them (run_cli)."""

    def add(p: argparse.ArgumentParser) -> None:
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run_cli)

    return add


# verb -> (help, adds its options). Only the verb being run is built: building a parser imports
# its module, and `fne cache info` should not wait for torch and scikit-learn.
VERBS = {
    "extract": ("run the frozen network once per image into the cache", _add_extract),
    "fit": ("train a linear head on cached features and evaluate it", _add_fit),
    "predict": ("predict DATA's images with a model from `fne fit`", _add_predict),
    "export": ("write cached activations / embeddings of DATA to HDF5", _add_export),
    "train": ("direct / scratch / frozen / finetune transfer experiments", _module_verb("fne.training.train")),
    "run": ("run a pipelines/*.toml experiment end to end", _module_verb("fne.pipeline.runner")),
    "report": ("Markdown + HTML report from run folders", _module_verb("fne.reporting.report")),
    "advise": ("which transfer-learning experiment suits DATA, and why", _module_verb("fne.reporting.advise")),
    "cache": ("inspect the activation cache", _add_cache),
    "backbones": ("list the backbone registry, or show one backbone's taps", _add_backbones),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: every verb listed, the options of the verb in argv[0] only (all
    verbs' options when argv is None)."""
    parser = argparse.ArgumentParser(prog="fne", description="transfer learning with full-network embeddings")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = argv[0] if argv else None
    for verb, (text, add) in VERBS.items():
        p = sub.add_parser(verb, help=text)
        if argv is None or verb == chosen:
            add(p)
    return parser


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one clean line (`fne: warning: skipped a.jpg: not an image file`), not
    Python's format with a source file and a line of code."""
    print(f"fne: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from fne.errors import FneError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    warnings.simplefilter("default")
    warnings.showwarning = _one_line
    try:
        return int(args.func(args) or 0)
    except FneError as e:
        print(f"fne {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fne {args.command}: interrupted; committed work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
