"""Cache stores at fsspec URLs (here fsspec's in-memory filesystem): parts are committed by a
marker object written last, readers ignore parts without one, and rows equal a local store's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import fne.extraction.extract as fx
from fne.cache.store import COMMITTED, Store, cache_root, list_stores
from fne.cache.upkeep import clean, verify
from fne.data import shards
from fne.data.datasets import load_dataset
from fne.linear.fit import fit

from .conftest import FAST, write_digits

# zarr on a sync filesystem (memory://, file://) needs fsspec >= 2024.12, the remote extra's floor;
# the hf extra's floor, datasets 2.19, holds fsspec at 2024.3 (constraints/lowest.txt, step 2)
pytest.importorskip("fsspec.implementations.asyn_wrapper", reason="fsspec < 2024.12 (see the remote extra)")
URL = "memory://fnetest/c"
STORE = dict(arch=FAST["arch"], weights="random", precision="fp32", storage_dtype="float32")


@pytest.fixture(autouse=True)
def clean_memory_fs(monkeypatch, tmp_path):
    """An empty in-memory filesystem; the images' manifests, which a URL cache keeps in the
    local default cache, go to a temporary folder instead of the checkout's cache/."""
    from fsspec.implementations.memory import MemoryFileSystem

    import fne.cache.store

    monkeypatch.setattr(fne.cache.store, "default_cache", lambda: tmp_path / "local-cache")

    def clear():
        MemoryFileSystem.store.clear()
        MemoryFileSystem.pseudo_dirs[:] = [""]

    clear()
    yield
    clear()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("fsspec") / "data", per_class=6, classes=3)


def _store(cache) -> Store:
    (store,) = list_stores(cache)
    return store


def test_cache_root_keeps_urls():
    assert cache_root("simplecache::memory://bucket/x") == "simplecache::memory://bucket/x"
    assert cache_root(URL) == URL


def test_extract_twice_then_fit_on_a_url_store(digits, tmp_path):
    r = fx.extract(digits, cache=URL, progress=False, **FAST)
    assert r.n_computed == 18 and r.store.startswith(URL + "/")
    again = fx.extract(digits, cache=URL, progress=False, **FAST)
    assert again.n_computed == 0 and again.n_cached == 18
    store = _store(URL)
    assert store.url == store.path == r.store and store.path.name in r.store
    assert len(store) == 18 and verify(store).problems == [] and verify(store).leftovers == []
    assert [rec["n_computed"] for rec in store.records()] == [18]  # a no-op run records nothing
    # Shard markers go through the store too.
    s = fx.extract(digits, cache=URL, shard="1/2", progress=False, **FAST)
    assert s.n_computed == 0 and s.shard_marker.startswith(URL + "/") and s.shard_marker.endswith("-1of2.json")
    status = shards.shard_status(digits, 2, cache=URL, **FAST)
    assert status[0] is None and status[1]["shard"] == [1, 2]

    m = fit(digits, features="fne", head="svm", splits=2, out=tmp_path / "run", cache=URL, **STORE)
    assert m["n_train"] + m["n_test"] == 18 and 0 <= m["accuracy"] <= 1


def test_part_without_marker_is_ignored_and_cleaned(digits):
    fx.extract(digits, cache=URL, progress=False, **FAST)
    store = _store(URL)
    n = len(store)
    # A writer killed before its marker: a whole zarr group under its final name, uncommitted.
    name = "00000000000000000000-1-deadbeef"
    group = zarr.open_group(store.files.zarr_store(f"parts/{name}"), mode="w")
    group.create_array("keys", shape=(1, 16), dtype="uint8")[...] = 7  # zarr 3.0: no data=
    for tap, c in store.taps:
        group.create_array(tap, shape=(1, store.views, c), dtype="float32")[...] = 0
    store.refresh()
    assert len(store) == n and "07" * 16 not in store.index()
    assert all(p.name != name for p in store.parts())
    assert verify(store).problems == [] and verify(store).leftovers == [name]
    assert clean(store) == 1
    assert not store.exists(f"parts/{name}") and verify(store).problems == [] and verify(store).leftovers == []
    # The same group with its marker is a committed part.
    store.commit(["07" * 16], {tap: np.zeros((1, store.views, c), dtype="float32") for tap, c in store.taps})
    assert any(store.exists(f"parts/{p.name}{COMMITTED}") for p in store.parts())
    store.refresh()
    assert len(store) == n + 1 and verify(store).problems == []


def test_rows_equal_a_local_store(digits, tmp_path):
    local = str(tmp_path / "cache")
    fx.extract(digits, cache=local, progress=False, **FAST)
    fx.extract(digits, cache=URL, progress=False, **FAST)
    a, b = _store(local), _store(URL)
    assert a.meta == b.meta and a.path.name == b.path.name
    keys = load_dataset(digits).keys()
    layers = [t for t, _ in a.taps]
    ra, rb = a.read(keys, layers), b.read(keys, layers)
    for la in layers:
        assert np.array_equal(ra[la], rb[la])


def test_file_url_store(tmp_path):
    from fne.cache.store import StoreKey

    url = f"file://{tmp_path}/cache"
    s = Store.open(url, StoreKey("a", "w", "p", "fp32", "float32"), [("t", 3)], 1)
    s.commit(["00" * 16, "11" * 16], {"t": np.ones((2, 1, 3))}, bad={"22" * 16: "unreadable"})
    (again,) = list_stores(url)
    assert again.path == tmp_path / "cache" / "a__w__p__fp32__float32"  # a file:// URL is the local folder
    assert len(again) == 2 and again.bad() == {"22" * 16: "unreadable"} and verify(again).problems == []
    assert (tmp_path / "cache" / "a__w__p__fp32__float32" / "store.json").exists()
    assert np.array_equal(again.read(["11" * 16], ["t"])["t"], np.ones((1, 1, 3), dtype=np.float32))


def test_an_fsspec_without_the_async_wrapper_is_named(tmp_path, monkeypatch):
    """fsspec before 2024.12 (which datasets < 3.3 pins) cannot give zarr an async view of a sync
    filesystem: the commit says which fsspec is needed, and nothing is committed."""
    import sys

    from fne.cache.store import StoreKey
    from fne.errors import CacheError

    monkeypatch.setitem(sys.modules, "fsspec.implementations.asyn_wrapper", None)  # as if absent
    s = Store.open(URL, StoreKey("a", "w", "p", "fp32", "float32"), [("t", 3)], 1)
    with pytest.raises(CacheError, match=r"^memory://fnetest/c/a__w__p__fp32__float32: a cache on "
                                         r"MemoryFileSystem needs fsspec >= 2024.12 \(this is "):
        s.commit(["00" * 16], {"t": np.ones((1, 1, 3))})
    assert len(Store.open(URL, StoreKey("a", "w", "p", "fp32", "float32"), [("t", 3)], 1)) == 0


def test_info_verify_clean_and_rm_on_a_url_cache(digits):
    """`fne cache info / verify --clean / rm` on a URL cache: sizes come from the filesystem, a
    damaged part is moved to quarantine/ (marker first) and its rows are computed again, and a
    removed store is gone."""
    import fne

    fx.extract(digits, cache=URL, progress=False, **FAST)
    (info,) = fne.cache_info(cache=URL).stores
    assert info.rows == 18 and info.parts == 1 and info.size_bytes > 18 * 4
    store = _store(URL)
    (part,) = store.parts()
    fs = store.files.fs
    chunk = next(f for f in fs.find(store.files.p(f"parts/{part.name}/rows")) if not f.endswith("zarr.json"))
    fs.rm(chunk)
    check = fne.cache_verify(cache=URL, clean=True)
    assert check.stores[0].quarantined == [part.name]  # what verify finds after the clean: sound
    assert fs.exists(store.files.p(f"quarantine/{part.name}")) and not store.exists(f"parts/{part.name}")
    assert not store.exists(f"parts/{part.name}{COMMITTED}")
    assert check.ok and len(_store(URL)) == 0
    assert fne.cache_verify(store.path.name, cache=URL).stores[0].findings.rows == 0  # by name, at a URL too
    assert fx.extract(digits, cache=URL, progress=False, **FAST).n_computed == 18
    assert [s.name for s in fne.cache_rm(store.path.name, cache=URL).stores] == [store.path.name]
    assert list_stores(URL) == []


def test_a_url_no_filesystem_here_opens_is_one_line_naming_the_cache(monkeypatch, tmp_path, capsys):
    """--cache foo://x (no such fsspec protocol) and s3://... without s3fs ended in fsspec's
    ValueError / ImportError traceback as the store opened; both are a CacheError naming --cache,
    before DATA is read, and no cache is made."""
    from fsspec.registry import known_implementations

    from fne.cli import main
    from fne.errors import CacheError

    monkeypatch.setitem(known_implementations, "fnenone",
                        {"class": "fne_no_such_module.FS", "err": "Install fnenonefs to access fnenone"})
    with pytest.raises(CacheError, match=r"^cache='foo://x': fsspec knows no filesystem foo:// \(a typo\?\); "):
        fx.extract("digits", cache="foo://x", progress=False, **FAST)
    with pytest.raises(CacheError, match=r"^cache='simplecache::fnenone://b/c': fnenone:// needs a package this "
                                         r"Python lacks: Install fnenonefs to access fnenone$"):
        cache_root("simplecache::fnenone://b/c")
    monkeypatch.setenv("FNE_CACHE", "foo://x")
    with pytest.raises(CacheError, match=r"^\$FNE_CACHE foo://x: fsspec knows no filesystem foo://"):
        cache_root()
    monkeypatch.chdir(tmp_path)
    assert main(["extract", "digits", "--cache", "foo://x", "--arch", "efficientnet_lite0", "--weights", "random",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fne extract: error: --cache 'foo://x': fsspec knows no filesystem foo://")
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("in_file", [True, False])
def test_a_pipeline_runs_on_a_url_cache_given_in_its_file_or_by_cache(digits, tmp_path, in_file):
    """`fne run --cache URL` (or a file's `cache = "URL"`), as the other verbs' --cache: the
    extraction's rows go to a store at the URL, the fit reads them there, and a forced rerun finds
    them cached there."""
    from fne.pipeline.runner import run

    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f"""\
[pipeline]
name = "url"
workers = 0
advise = false
{f'cache = "{URL}"' if in_file else ''}

[datasets.d]
data = "{digits}"

[[backbones]]
arch = "{FAST['arch']}"
weights = "random"
precision = "fp32"
storage_dtype = "float32"

[fit]
features = ["last"]
heads = ["logreg"]
splits = 2
test_size = 0.5
""")
    said: list[str] = []
    given = {} if in_file else {"cache": URL}
    r = run(pipeline, tmp_path / "out", report=False, log=said.append, progress=False, **given)
    assert r["ran"] == 1 and _store(URL).path.startswith(URL + "/") and len(_store(URL)) == 18
    assert any(s.endswith(": 18 computed") or ": 18 computed at " in s for s in said), said
    said.clear()
    r = run(pipeline, tmp_path / "out", report=False, log=said.append, progress=False, force=True, **given)
    assert r["ran"] == 1 and any("0 computed" in s and "18 already cached" in s for s in said), said


def test_a_file_url_is_the_local_folder_it_names(digits, tmp_path):
    """A cache written as a folder and then named by a file:// URL (or the other way round) is one
    cache: its rows are read, and `fne cache verify --clean` keeps them (it removed every part of
    a folder-written store as unfinished: they had no file:// commit marker)."""
    from fne.cache.verbs import cache_verify

    folder = tmp_path / "cache"
    url = f"file://{folder}"
    fx.extract(digits, cache=str(folder), progress=False, **FAST)
    n = len(_store(folder))
    assert n == len(load_dataset(digits)) and len(_store(url)) == n
    cache_verify(cache=url, clean=True)
    assert len(_store(folder)) == n
    again = fx.extract(digits, cache=url, progress=False, **FAST)
    assert again.n_computed == 0 and again.n_cached == n


@pytest.mark.parametrize("url,folder", [("file:///srv/a%20b/c", "/srv/a b/c"), ("file://localhost/srv/x", "/srv/x"),
                                        ("file:///srv/y", "/srv/y")])
def test_a_file_url_names_its_folder_as_a_browser_does(url, folder):
    """file:// URLs as written by a file manager: quoted characters and `localhost` name the folder."""
    from fne.cache.fs import LocalFiles, files_at

    f = files_at(url)
    assert isinstance(f, LocalFiles) and f.path == Path(folder)
    assert cache_root(url) == Path(folder)  # the cache's other files (manifests, removals) go there too
