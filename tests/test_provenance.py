"""Provenance: a run records the data files it read (path, sha256), hashes are cached by path,
size and mtime, and a fall-back to the system copy of Fashion-MNIST is said in one line."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from lbtkit.config import build_config
from lbtkit.data import idx, load_dataset
from lbtkit.data.provenance import (
    SIDECAR_SUFFIX,
    data_files,
    directory_sha256,
    file_sha256,
    user_cache_dir,
)
from lbtkit.train import run

FASHION = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
           "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LBTKIT_CACHE_DIR", str(tmp_path / "cache"))
    return user_cache_dir()


@pytest.fixture
def system_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fashion-MNIST's Debian folder, moved to an empty temporary directory."""
    folder = tmp_path / "system-fashion-mnist"
    folder.mkdir()
    layout = dataclasses.replace(idx.IDX_LAYOUTS["fashion-mnist"], system_folders=(folder,))
    monkeypatch.setitem(idx.IDX_LAYOUTS, "fashion-mnist", layout)
    return folder


def write_fashion(folder: Path, n_train: int = 256, n_val: int = 64) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, array, magic in ((f"{prefix}-images-idx3-ubyte", images, 0x803),
                                   (f"{prefix}-labels-idx1-ubyte", labels, 0x801)):
            header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big")
                                                         for d in array.shape)
            with gzip.open(folder / f"{name}.gz", "wb") as handle:
                handle.write(header + array.tobytes())
    return [folder / f"{name}.gz" for name in FASHION]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_digest(character: str) -> str:
    return character * 64


# --- the hash and its cache ----------------------------------------------------------------


def test_file_hash_is_cached_next_to_the_file_and_reused(tmp_path: Path, user_cache: Path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"some bytes" * 1000)
    assert file_sha256(data) == sha256(data)
    sidecar = tmp_path / f"data.bin{SIDECAR_SUFFIX}"
    record = json.loads(sidecar.read_text())
    assert record["sha256"] == sha256(data) and record["size"] == data.stat().st_size
    assert not user_cache.exists()
    # The cached value is what comes back while the file is unchanged: the file is not reread.
    sidecar.write_text(json.dumps({**record, "sha256": fake_digest("a")}))
    assert file_sha256(data) == fake_digest("a")


def test_a_changed_file_is_hashed_again(tmp_path: Path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"first")
    first = file_sha256(data)
    data.write_bytes(b"other")  # same size: the mtime tells
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_sha256(data) == sha256(data) != first


@pytest.mark.parametrize("garbage", ["", "{not json", '{"sha256": "short"}', "[1, 2]"])
def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path: Path, garbage: str):
    data = tmp_path / "data.bin"
    data.write_bytes(b"payload")
    (tmp_path / f"data.bin{SIDECAR_SUFFIX}").write_text(garbage)
    assert file_sha256(data) == sha256(data)
    assert json.loads((tmp_path / f"data.bin{SIDECAR_SUFFIX}").read_text())["sha256"] \
        == sha256(data)


def test_package_folders_get_no_sidecar_but_the_user_cache(tmp_path: Path, user_cache: Path):
    owned = tmp_path / "owned"
    owned.mkdir()
    data = owned / "data.bin"
    data.write_bytes(b"package data")
    records = data_files([data], sidecar_dirs=[owned])
    assert records == [{"path": str(data), "sha256": sha256(data)}]
    assert sorted(p.name for p in owned.iterdir()) == ["data.bin"]
    (cached,) = user_cache.iterdir()
    assert json.loads(cached.read_text())["sha256"] == sha256(data)
    cached.write_text(cached.read_text().replace(sha256(data), fake_digest("b")))
    assert data_files([data], sidecar_dirs=[owned])[0]["sha256"] == fake_digest("b")


def test_an_unwritable_folder_falls_back_to_the_user_cache(tmp_path: Path, user_cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    # Root may write anywhere, so the refusal is simulated where the module asks.
    from lbtkit.data import provenance

    monkeypatch.setattr(provenance, "_writable", lambda folder: False)
    data = tmp_path / "data.bin"
    data.write_bytes(b"read-only data")
    assert file_sha256(data) == sha256(data)
    assert not (tmp_path / f"data.bin{SIDECAR_SUFFIX}").exists()
    assert len(list(user_cache.iterdir())) == 1


def test_an_unwritable_cache_still_gives_the_hash(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    from lbtkit.data import provenance

    monkeypatch.setattr(provenance, "_writable", lambda folder: False)
    monkeypatch.setenv("LBTKIT_CACHE_DIR", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a directory")
    data = tmp_path / "data.bin"
    data.write_bytes(b"x")
    assert file_sha256(data) == sha256(data)


def test_a_directory_is_the_hash_of_its_manifest_and_is_left_untouched(tmp_path: Path):
    folder = tmp_path / "train"
    for name, content in (("cat/1.png", b"one"), ("cat/2.png", b"two"), ("dog/1.png", b"3")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    manifest = "".join(f"{sha256(folder / name)}  {name}\n"
                       for name in ("cat/1.png", "cat/2.png", "dog/1.png"))
    expected = hashlib.sha256(manifest.encode()).hexdigest()
    assert directory_sha256(folder) == expected
    assert directory_sha256(folder) == expected  # from the cache
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == \
        ["cat", "cat/1.png", "cat/2.png", "dog", "dog/1.png"]
    (folder / "dog" / "2.png").write_bytes(b"new image")
    assert directory_sha256(folder) != expected


# --- where the data came from ----------------------------------------------------------------


def test_fallback_to_the_system_copy_is_logged_once(tmp_path: Path, system_folder: Path,
                                                    caplog: pytest.LogCaptureFixture):
    files = write_fashion(system_folder, n_train=20, n_val=10)
    with caplog.at_level(logging.INFO, logger="lbtkit"):
        data = load_dataset("fashion-mnist", tmp_path / "mine")
    assert data.files == tuple(files)
    lines = [r.getMessage() for r in caplog.records if "system copy" in r.getMessage()]
    assert lines == [f"fashion-mnist: not in {tmp_path / 'mine' / 'fashion-mnist'} or "
                     f"{tmp_path / 'mine' / 'FashionMNIST' / 'raw'}; reading the system copy "
                     f"in {system_folder}"]


def test_data_under_data_dir_is_read_without_a_fallback_line(
        tmp_path: Path, system_folder: Path, caplog: pytest.LogCaptureFixture):
    write_fashion(system_folder, n_train=20, n_val=10)
    mine = write_fashion(tmp_path / "mine" / "fashion-mnist", n_train=30, n_val=10)
    with caplog.at_level(logging.INFO, logger="lbtkit"):
        data = load_dataset("fashion-mnist", tmp_path / "mine")
    assert data.files == tuple(mine) and data.train_labels.shape == (30,)
    assert not [r for r in caplog.records if "system copy" in r.getMessage()]


def test_every_reader_names_its_files(tmp_path: Path):
    from PIL import Image

    assert load_dataset("synthetic", "unused").files == ()
    (csv,) = load_dataset("digits", "unused").files
    assert csv.name == "digits.csv.gz" and csv.is_file()
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / "pets" / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "pets" / split / label / "1.png")
    folders = load_dataset(f"imagefolder:{tmp_path / 'pets'}", "unused", image_size=8).files
    assert folders == (tmp_path / "pets" / "train", tmp_path / "pets" / "test")
    assert [r["sha256"] for r in data_files(folders)] == [directory_sha256(f) for f in folders]


# --- a run records them ----------------------------------------------------------------------


def test_a_run_records_the_files_it_read_from_its_data_dir(tmp_path: Path, system_folder: Path):
    write_fashion(system_folder, n_train=20, n_val=10)  # must not be what the run reads
    files = write_fashion(tmp_path / "data" / "fashion-mnist")
    config = build_config(preset="smoke", overrides={
        "dataset": "fashion-mnist", "data_dir": str(tmp_path / "data"), "epochs": 1,
        "output_dir": str(tmp_path / "run")})
    results = run(config, progress=False)
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = [{"path": str(f), "sha256": sha256(f)} for f in files]
    assert stored["data_files"] == results["data_files"] == expected
    assert all(Path(f"{f}{SIDECAR_SUFFIX}").is_file() for f in files)


def test_a_run_on_the_system_copy_records_it_without_writing_there(
        tmp_path: Path, system_folder: Path, user_cache: Path):
    files = write_fashion(system_folder)
    config = build_config(preset="smoke", overrides={
        "dataset": "fashion-mnist", "data_dir": str(tmp_path / "empty"), "epochs": 1,
        "output_dir": str(tmp_path / "run")})
    results = run(config, progress=False)
    assert results["data_files"] == [{"path": str(f), "sha256": sha256(f)} for f in files]
    assert sorted(system_folder.iterdir()) == sorted(files)
    assert len(list(user_cache.iterdir())) == 4


def test_a_digits_run_records_scikit_learns_file(tmp_path: Path):
    config = build_config(preset="smoke", overrides={"epochs": 1,
                                                     "output_dir": str(tmp_path / "run")})
    (record,) = run(config, progress=False)["data_files"]
    assert record["path"].endswith("digits.csv.gz")
    assert record["sha256"] == sha256(Path(record["path"]))
    assert not Path(record["path"] + SIDECAR_SUFFIX).exists()  # not written into sklearn
