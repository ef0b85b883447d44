"""The store's part layout and reading: one rows array per part (every tap side by side, column
ranges in store.json), stores of the previous layout still read, reading never creates a store
nor calls a passing failure damage, and device-decoded rows found by `decode="auto"`."""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr

from fne.cache import parts
from fne.cache.spec import DEFAULT_DTYPE, StoreSpec
from fne.cache.store import Store, list_stores, lock_file, lock_files
from fne.cache.upkeep import quarantine, verify
from fne.data.datasets import load_dataset
from fne.errors import CacheError, FneError
from fne.linear.embedding import make_transform
from fne.linear.features import Rows
from fne.linear.fit import fit

from .conftest import FAST
from .test_stores import HOLD

SPEC = dict(arch=FAST["arch"], weights="random", precision="fp32", storage_dtype="float32")


def _keys(n: int, salt: int = 0) -> list[str]:
    return [f"{salt:02x}{i:030x}" for i in range(n)]


def _rows(store: Store, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t: rng.random((n, store.views, c), dtype=np.float32) for t, c in store.taps}


@pytest.fixture
def store(tmp_path) -> Store:
    return StoreSpec(**SPEC, cache=str(tmp_path / "cache")).open()


def test_a_part_is_one_rows_array_with_tap_column_ranges(store):
    rows = _rows(store, 5)
    name = store.commit(_keys(5), rows)
    arrays = sorted(p.name for p in (store.path / "parts" / name).iterdir() if p.is_dir())
    assert arrays == ["keys", "rows"]
    meta = json.loads((store.path / "store.json").read_text())
    assert meta["format"] == 2
    lo = 0
    for tap, c in store.taps:
        assert meta["columns"][tap] == [lo, lo + c]
        lo += c
    back = store.read(_keys(5)[::-1], [t for t, _ in store.taps])
    for tap, _ in store.taps:
        np.testing.assert_array_equal(back[tap], rows[tap][::-1])


def _write_format1(store: Store, keys: list[str], rows: dict[str, np.ndarray]) -> None:
    """A part as fne wrote them before format 2: one zstd array per tap, store.json format 1."""
    group = zarr.open_group(str(store.path / "parts" / "00000000000000000001-1-00000000-aaaaaaaa"), mode="w")
    k = parts.key_bytes(keys)  # shape and dtype, then the values: zarr 3.0 has no create_array(data=)
    group.create_array("keys", shape=k.shape, dtype=k.dtype)[...] = k
    for tap, c in store.taps:
        group.create_array(tap, shape=rows[tap].shape, dtype=rows[tap].dtype,
                           chunks=(len(keys), store.views, c))[...] = rows[tap]
    meta = {k: v for k, v in store.meta.items() if k != "columns"}
    (store.path / "store.json").write_text(json.dumps({**meta, "format": 1}))


def test_a_format1_store_is_read_then_upgraded_by_the_next_write(store):
    old = _rows(store, 3, seed=1)
    _write_format1(store, _keys(3), old)
    spec = StoreSpec(**SPEC, cache=str(store.path.parent))
    reread = spec.open()
    assert reread.meta["format"] == 1  # reading writes nothing
    got = reread.read(_keys(3), [t for t, _ in store.taps])
    assert all(np.array_equal(got[t], old[t]) for t, _ in store.taps)
    writer = spec.open()
    new = _rows(store, 2, seed=2)
    writer.commit(_keys(2, salt=1), new)
    assert writer.meta["format"] == 2 and json.loads((store.path / "store.json").read_text())["format"] == 2
    both = Store.at(store.path).read([*_keys(3), *_keys(2, salt=1)], [store.taps[-1][0]])
    last = store.taps[-1][0]
    assert np.array_equal(both[last], np.concatenate([old[last], new[last]]))
    assert verify(writer).problems == []


def test_a_missing_chunk_is_damage_not_zeros(store):
    name = store.commit(_keys(4), _rows(store, 4))
    next(p for p in (store.path / "parts" / name / "rows").rglob("*") if p.is_file()
         and p.name != "zarr.json").unlink()
    store.refresh()
    with pytest.raises(CacheError, match=f"part {name} .* is damaged.*verify --clean"):
        store.read(_keys(4), [store.taps[0][0]])
    found = verify(store)
    assert found.damaged == [name] and "unreadable" in found.problems[0]
    assert quarantine(store, found.damaged) == [name] and len(store) == 0


def test_a_damaged_format1_part_is_named(store):
    _write_format1(store, _keys(3), _rows(store, 3))
    (part,) = Store.at(store.path).parts()
    chunk = next(p for p in (part / store.taps[-1][0]).rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])  # a zstd frame cut short
    with pytest.raises(CacheError, match=f"part {part.name} .* is damaged.*verify --clean"):
        Store.at(store.path).read(_keys(3), [store.taps[-1][0]])
    assert verify(Store.at(store.path)).damaged == [part.name]


def test_verify_returns_findings_and_leaves_no_state(store):
    store.commit(_keys(2), _rows(store, 2))
    store.commit(_keys(3), _rows(store, 3))  # two writers computed the same images
    found = verify(store)
    assert found.ok and found.duplicates == 2 and found.rows == 3 and found.leftovers == []
    assert not {"damaged", "duplicates", "leftovers"} & set(vars(store))


# ------------------------------------------------------------------ defects of issue 17
def test_a_read_only_verb_on_rows_no_store_holds_creates_no_store(digits_folder, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FneError, match="not in the cache"):
        fit(digits_folder, out=tmp_path / "run", cache=str(cache), splits=2, **FAST)
    assert list_stores(cache) == []
    assert not [d for d in cache.iterdir() if (d / "parts").exists()] if cache.exists() else True


def test_rows_not_cached_are_counted_as_distinct_images_where_data_holds_copies(tmp_path, capsys):
    """flowers12 (960 files, two of them one image) said `959 of 959 images of DATA are not in the
    cache` where a cache folder was there, and `the 960 images` where none was: the count is of
    distinct images, and the line now says so where DATA lists copies."""
    from fne.cli import main

    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    first = sorted((data / "0").iterdir())[0]
    shutil.copy(first, data / "0" / f"copy-{first.name}")  # 7 files, 6 distinct images
    (tmp_path / "cache").mkdir()
    args = ["--weights", "random", "--arch", FAST["arch"], "--cache", str(tmp_path / "cache")]
    assert main(["fit", str(data), *args, "--out", str(tmp_path / "run")]) == 2
    assert f"fne fit: error: 6 of 6 distinct images of {data} are not in the cache " in capsys.readouterr().err
    (data / "0" / f"copy-{first.name}").unlink()
    assert main(["fit", str(data), *args, "--out", str(tmp_path / "run")]) == 2
    assert f"fne fit: error: 6 of 6 images of {data} are not in the cache " in capsys.readouterr().err


def test_a_failed_fit_makes_no_cache_folder_and_keeps_an_existing_caches_listing(digits_folder, tmp_path, capsys):
    """`fne fit --cache /typo` said the images were not in /typo/<store>, after hashing every image
    into a new /typo/manifests/; it now says at once that the folder does not exist, and makes
    none. A fit that stops on its DATA (one class) with --extract makes none either. An existing
    cache still keeps DATA's manifest (its keys save the next command the hashing)."""
    from fne.cli import main

    from .conftest import write_digits

    typo, args = tmp_path / "typo", ["--weights", "random", "--arch", FAST["arch"], "--out", str(tmp_path / "run")]
    assert main(["fit", str(digits_folder), "--cache", str(typo), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fne fit: error: the 24 images of {digits_folder} are not in the cache {typo}, a folder "
                          f"that does not exist; add them with:\n  fne extract {digits_folder} ")
    assert err.endswith("\n(or pass --extract, to let `fne fit` run the network)\n")
    with pytest.raises(FneError, match=r"\n\(or pass extract_missing=True, to let `fne\.fit` run the network\)$"):
        fit(digits_folder, out=tmp_path / "run", cache=str(typo), **SPEC)
    one = write_digits(tmp_path / "one", per_class=6, classes=1)
    assert main(["fit", str(one), "--extract", "--cache", str(typo), *args]) == 2
    assert "a head needs at least 2 classes" in capsys.readouterr().err
    assert not typo.exists() and not (tmp_path / "run").exists()
    cache = tmp_path / "cache"
    cache.mkdir()
    assert main(["fit", str(digits_folder), "--cache", str(cache), *args]) == 2
    assert "24 of 24 images" in capsys.readouterr().err and len(list((cache / "manifests").glob("*.json"))) == 1


def test_the_extract_command_a_fit_prints_is_one_the_shell_runs_into_the_store_it_reads(tmp_path):
    """The printed `fne extract` line left a DATA or cache with a space unquoted (`fne extract my
    data ...`: two DATA arguments) and left out --seed-weights, so running it computed the rows of
    seed 0 and the fit stopped again."""
    import shlex

    from fne.cache.spec import StoreSpec
    from fne.cli import build_parser
    from fne.linear.features import extract_command

    spec = StoreSpec(**{**SPEC, "weights_seed": 3, "crop": "squash", "cache": str(tmp_path / "my cache")})
    line = extract_command("my data/*.tar", spec)
    words = shlex.split(line)
    assert words[:3] == ["fne", "extract", "my data/*.tar"]
    a = vars(build_parser(words[1:]).parse_args(words[1:]))
    assert StoreSpec(**{k: a[k] for k in SPEC if k in a}, weights_seed=a["weights_seed"], crop=a["crop"],
                     cache=a["cache"]) == spec

@pytest.mark.parametrize("error", [MemoryError(), OSError(errno.EIO, "Input/output error"),
                                   TimeoutError("read timed out")])
def test_a_passing_failure_while_reading_is_not_called_damage(store, monkeypatch, error):
    store.commit(_keys(2), _rows(store, 2))
    store.index()
    real = zarr.open_array

    def hiccup(where, *a, **k):
        if "keys" not in str(where):
            raise error
        return real(where, *a, **k)

    monkeypatch.setattr(zarr, "open_array", hiccup)
    with pytest.raises(type(error)) as e:
        store.read(_keys(2), [store.taps[0][0]])
    assert not isinstance(e.value, CacheError) and "damaged" not in str(e.value)


def test_rows_embedded_on_an_empty_index(store):
    store.commit(_keys(4), _rows(store, 4))
    layers = [t for t, _ in store.taps]
    rows = Rows(store, _keys(4), layers)
    embed = rows.fit_embedding("fne", np.arange(4))
    z = rows.embedded(embed, np.array([], dtype=np.int64))
    full = rows.embedded(embed, np.arange(4))
    assert z.shape == (0, full.shape[1]) and z.dtype == full.dtype
    l2 = make_transform("l2").fit(np.ones((1, full.shape[1]), np.float32))
    assert rows.embedded(l2, np.array([], dtype=np.int64)).shape == (0, full.shape[1])


# ------------------------------------------------------------------ decode auto (issue 19, store side)
def test_decode_auto_reads_device_decoded_rows_and_prefers_pil_on_a_tie(tmp_path, capsys):
    cache = str(tmp_path / "cache")
    dev = StoreSpec(**SPEC, cache=cache, decode="device").open()
    dev.commit(_keys(4), _rows(dev, 4))
    auto = StoreSpec(**SPEC, cache=cache)
    assert auto.decode == "auto"
    found = auto.find(_keys(4))
    assert found.path == dev.path and auto.pinned(found).decode == "device"
    assert StoreSpec(**SPEC, cache=cache, decode="pil").find(_keys(4)).path != dev.path
    pil = StoreSpec(**SPEC, cache=cache, decode="pil").open()
    pil.commit(_keys(4), _rows(pil, 4))
    assert auto.find(_keys(4), "fit").path == pil.path  # a tie: PIL's rows
    assert re.search(r"also held: fp32/float32/device-decoded(/torchcodec)? \(4 rows\)", capsys.readouterr().err)
    pil.commit(_keys(2, salt=9), _rows(pil, 2))
    dev.commit(_keys(3, salt=8), _rows(dev, 3))
    assert auto.find([*_keys(4), *_keys(3, salt=8)]).path == dev.path  # most rows first


def test_decode_auto_writes_where_pil_rows_go_on_a_cpu(tmp_path):
    cache = str(tmp_path / "cache")  # (on CUDA auto decodes on the device: a store of its own, test_gpu)
    on_cpu = dict(SPEC, cache=cache, device="cpu")
    assert StoreSpec(**on_cpu).open().path == StoreSpec(**on_cpu, decode="pil").open().path


def test_extracted_rows_read_back_through_the_new_layout(digits_folder, warm_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    (store,) = list_stores(cache)
    keys = load_dataset(digits_folder).keys()
    rows = store.read(keys, [t for t, _ in store.taps])
    assert all(r.shape[0] == len(keys) and np.isfinite(r).all() for r in rows.values())
    assert all(sorted(p.name for p in part.iterdir() if p.is_dir()) == ["keys", "rows"] for part in store.parts())


def test_float16_rows_read_back_exactly_in_any_order(tmp_path):
    import torch  # noqa: F401  (loaded, as by every verb: reading widens through it)

    store = StoreSpec(**{**SPEC, "storage_dtype": "float16"}, cache=str(tmp_path / "cache")).open()
    rows = _rows(store, 6)
    store.commit(_keys(6)[:3], {t: r[:3] for t, r in rows.items()})
    store.commit(_keys(6)[3:], {t: r[3:] for t, r in rows.items()})
    layers = [store.taps[1][0], store.taps[-1][0]]
    for order in (np.arange(6), np.array([4, 0, 5, 2, 1, 3])):
        got = store.read_rows([_keys(6)[i] for i in order], layers)
        want = np.concatenate([rows[la][order].astype(np.float16).astype(np.float32) for la in layers], axis=2)
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_rows_float16_cannot_hold_are_refused_naming_their_taps(tmp_path):
    """A network whose activations pass float16's ±65,504 (random weights without normalisation)
    would store infinities that make every fit fail later: the commit refuses them, naming the
    taps and the way out, and writes nothing."""
    from fne.errors import CacheError

    store = StoreSpec(**{**SPEC, "storage_dtype": "float16"}, cache=str(tmp_path / "cache")).open()
    rows = _rows(store, 3)
    first, last = store.taps[0][0], store.taps[-1][0]
    rows[first][1, 0, 0], rows[last][2, 0, 1] = 1e6, np.nan
    with pytest.raises(CacheError, match=rf"the rows of {first}, {last} do not fit float16 storage .*"
                                         r"storage_dtype='float32'") as e:
        store.commit(_keys(3), rows)
    assert "--storage-dtype float32" in e.value.cli  # what `fne extract` prints
    assert not store.parts() and len(store) == 0
    rows[first][1, 0, 0], rows[last][2, 0, 1] = 6e4, 0.0  # within float16's range
    store.commit(_keys(3), rows)
    assert len(store) == 3


def test_a_timm_store_is_named_for_every_system_and_an_earlier_name_is_still_read(tmp_path):
    """A `timm:NAME` store's folder held a ':', which Windows does not take in a file name. New
    stores are named `timm+NAME__…`; a store an earlier fne wrote as `timm:NAME__…` keeps its rows."""
    import os

    from fne.cache.store import StoreKey

    key = StoreKey("timm:resnet18", "random-seed0", "center224-tv", "fp32", "float32")
    new = Store.open(str(tmp_path / "new"), key, [("t", 3)], 1)
    k1 = "ab" * 16  # a content key
    new.commit([k1], {"t": np.ones((1, 1, 3), np.float32)})
    assert new.path.name == "timm+resnet18__random-seed0__center224-tv__fp32__float32" and ":" not in new.path.name
    if os.name == "nt":  # an earlier fne could not write the other name there
        return
    old = tmp_path / "old"
    old.mkdir()
    shutil.copytree(new.path, old / "timm:resnet18__random-seed0__center224-tv__fp32__float32")
    again = Store.open(str(old), key, [("t", 3)], 1)
    assert again.path.name == "timm:resnet18__random-seed0__center224-tv__fp32__float32"
    assert np.array_equal(again.read([k1], ["t"])["t"], np.ones((1, 1, 3), np.float32))
    assert [s.path.name for s in list_stores(str(old))] == [again.path.name]


def test_a_damaged_store_that_a_verb_reads_is_said_once_as_its_error_and_another_as_a_warning(tmp_path):
    """`fne fit` on rows of a store whose store.json is damaged said the damage twice: a warning
    "store … left out: …" from the search of the cache, then the same words as its error. Now the
    error alone; a damaged store the verb does not read is still a warning."""
    cache, stored = str(tmp_path / "cache"), {**SPEC, "storage_dtype": DEFAULT_DTYPE}  # what `auto` opens
    mine = StoreSpec(**stored, cache=cache)
    other = StoreSpec(**{**stored, "weights_seed": 1}, cache=cache)
    for spec in (mine, other):
        store = spec.open()
        store.commit(_keys(2), _rows(store, 2))
    meta = mine.open().path / "store.json"
    meta.write_text(meta.read_text()[:40])
    auto = StoreSpec(**{**SPEC, "storage_dtype": "auto"}, cache=cache)  # the search of the cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CacheError, match=re.escape(f"{meta} is damaged: ")):
            auto.find(_keys(2))
    with pytest.warns(UserWarning, match=re.escape(f"store {meta.parent.name} left out: {meta} is damaged")):
        found = StoreSpec(**{**SPEC, "weights_seed": 1, "storage_dtype": "auto"}, cache=cache).find(_keys(2))
    assert found.path == other.open().path


@pytest.mark.parametrize("damage", ["cut", "later"])
def test_a_store_whose_store_json_cannot_be_read_is_reported_not_passed_over(store, capsys, damage):
    """A damaged store.json (or a later fne's format) made its store vanish: `fne cache verify`
    said "no stores" and exited 0, `cache info` listed none. Now verify reports it (exit 1), and
    the other commands leave it out with a warning naming it."""
    import fne
    from fne.cli import main

    store.commit(_keys(2), _rows(store, 2))
    cache = store.path.parent
    meta = store.path / "store.json"
    if damage == "cut":
        meta.write_text(meta.read_text()[:40])
        said = f"{store.path}/store.json is damaged: "
    else:
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 99}))
        said = f"{store.path}: store format 99 (this fne reads "
    check = fne.cache_verify(cache=str(cache))
    (one,) = check.stores
    assert not check.ok and one.name == store.path.name and one.findings.problems[0].startswith(said)
    assert main(["cache", "verify", "--cache", str(cache)]) == 1
    assert f"{store.path.name}: PROBLEMS (0 rows)\n  - {said}" in capsys.readouterr().out
    with pytest.warns(UserWarning, match=re.escape(f"store {store.path.name} left out: {said}")):
        assert fne.cache_info(cache=str(cache)).stores == []
    with pytest.warns(UserWarning, match="left out"):
        assert list_stores(cache) == []
    # fne cache rm removes it whole (it said "no store is named"): a dry run lists it, a live
    # writer's lock keeps it, and then it goes with its lock files
    (gone,) = fne.cache_rm(store.path.name, cache=str(cache), dry_run=True).stores
    assert gone.unreadable.startswith(said) and gone.size_bytes > 0 and store.path.is_dir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_file(store, "d0"))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(CacheError, match="a running extraction is writing to it"):
            fne.cache_rm(store.path.name, cache=str(cache))
    finally:
        holder.communicate("done\n", timeout=60)
    assert store.path.is_dir() and lock_files(store.path)
    assert main(["cache", "rm", store.path.name, "--cache", str(cache)]) == 0
    assert f"removed {store.path.name} (its store.json unreadable, " in capsys.readouterr().out
    assert not store.path.exists() and not lock_files(store.path) and not list(cache.glob(".removing-*"))


def test_a_cache_that_is_one_store_is_refused_before_anything_is_read_or_written(digits_folder, warm_cache, tmp_path,
                                                                                  capsys, monkeypatch):
    """`--cache` given the `store:` path `fne extract` prints: fit said its images were not in
    STORE/STORE and offered the `fne extract` that computed them all again into a store nested in
    the store. One line now names the cache folder to give."""
    from fne.cli import main

    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    (store,) = list_stores(cache)
    before = sorted(p.name for p in store.path.iterdir())
    said = f"is one store of a cache, not a cache: give the folder holding it, {cache}"
    assert main(["fit", str(digits_folder), "--cache", str(store.path), "--out", str(tmp_path / "run"),
                 "--arch", FAST["arch"], "--weights", "random", "--extract"]) == 2
    assert capsys.readouterr().err == f"fne fit: error: --cache '{store.path}': {said} (the cache is a folder of stores)\n"
    monkeypatch.setenv("FNE_CACHE", str(store.path))
    assert main(["cache", "info"]) == 2 and f"$FNE_CACHE {store.path}: {said}" in capsys.readouterr().err
    assert sorted(p.name for p in store.path.iterdir()) == before and not (tmp_path / "run").exists()
    monkeypatch.setenv("FNE_CACHE", str(cache))
    assert main(["cache", "verify", str(store.path)]) == 0  # a store folder is what verify takes
