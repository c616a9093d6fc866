"""``lbtkit fetch fashion-mnist``: the real download code against a local HTTP server.

A ``http.server`` on 127.0.0.1 (in a thread) serves small IDX files written in the real
on-disk format; the data set's mirrors and checksums are patched to point at it and to match
those files. Everything else (streaming, hashing, the atomic rename, the read-back with the
readers, the error lines) is the code a cluster's login node runs.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from lbtkit.data import idx, load_dataset
from lbtkit.data.download import ChecksumError
from lbtkit.doctor import collect_checks, run_doctor
from lbtkit.errors import UserError
from lbtkit.fetch import fetch

NAMES = idx.IDX_FILES
PUBLISHED_MD5 = dict(idx.IDX_LAYOUTS["fashion-mnist"].remote.md5)


def _idx_gz(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _archives(n_train: int = 6, n_val: int = 4) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    blobs = {}
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        blobs[f"{prefix}-images-idx3-ubyte"] = _idx_gz(
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x803)
        blobs[f"{prefix}-labels-idx1-ubyte"] = _idx_gz(np.arange(n) % 10, 0x801)
    return blobs


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serve ``tmp_path/www`` on 127.0.0.1 and point fashion-mnist's layout at it: the first
    mirror is a folder that does not exist (404), the second holds the archives; checksums
    patched to the served files; the Debian folder moved to an empty directory."""
    www = tmp_path / "www" / "fashion"
    www.mkdir(parents=True)
    blobs = _archives()
    for name, blob in blobs.items():
        (www / f"{name}.gz").write_bytes(blob)
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path / "www")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for key in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(key, raising=False)
    remote = idx.IdxRemote(
        mirrors=(f"{base}/missing/", f"{base}/fashion/"),
        md5={name: hashlib.md5(blob).hexdigest() for name, blob in blobs.items()},
        sha256={name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()},
    )
    system = tmp_path / "system"
    system.mkdir()
    layout = dataclasses.replace(idx.IDX_LAYOUTS["fashion-mnist"], remote=remote,
                                 system_folders=(system,))
    monkeypatch.setitem(idx.IDX_LAYOUTS, "fashion-mnist", layout)
    try:
        yield {"www": www, "blobs": blobs, "requests": requests, "base": base,
               "system": system}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_published_checksums_are_the_official_ones():
    # zalandoresearch/fashion-mnist's README (and torchvision's FashionMNIST) publish these.
    assert PUBLISHED_MD5 == {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    mirrors = idx.IDX_LAYOUTS["fashion-mnist"].remote.mirrors
    assert all(m.endswith("/") for m in mirrors)
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" in mirrors


def test_fetch_downloads_verifies_and_reads_back(tmp_path, mirror):
    data_dir = tmp_path / "data"
    folder = fetch("fashion-mnist", data_dir=data_dir)
    assert folder == data_dir / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    for name, blob in mirror["blobs"].items():
        assert (folder / f"{name}.gz").read_bytes() == blob
    # The first mirror answered 404 for each file; the second served it.
    assert sorted(mirror["requests"]) == sorted(
        [f"/missing/{n}.gz" for n in NAMES] + [f"/fashion/{n}.gz" for n in NAMES])
    ds = load_dataset("fashion-mnist", data_dir)
    assert ds.train_images.shape == (6, 1, 28, 28) and ds.val_labels.tolist() == [0, 1, 2, 3]

    # Present and intact: no request at all the second time.
    mirror["requests"].clear()
    assert fetch("fashion-mnist", data_dir=data_dir) == folder
    assert mirror["requests"] == []


def test_a_torchvision_copy_under_data_dir_counts_and_the_system_copy_does_not(tmp_path,
                                                                              mirror):
    for name, blob in mirror["blobs"].items():
        (mirror["system"] / f"{name}.gz").write_bytes(blob)
    data_dir = tmp_path / "data"
    # The Debian copy alone: fetch still downloads into data_dir (other nodes read that).
    assert fetch("fashion-mnist", data_dir=data_dir) == data_dir / "fashion-mnist"
    assert len([p for p in mirror["requests"] if "/fashion/" in p]) == 4

    other = tmp_path / "other"
    raw = other / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, blob in mirror["blobs"].items():
        (raw / name).write_bytes(gzip.decompress(blob))  # torchvision keeps them unpacked
    mirror["requests"].clear()
    assert fetch("fashion-mnist", data_dir=other) == raw
    assert mirror["requests"] == []


def test_partly_fetched_data_gets_only_the_missing_files(tmp_path, mirror):
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(
        mirror["blobs"]["train-images-idx3-ubyte"])
    fetch("fashion-mnist", data_dir=tmp_path / "data")
    fetched = {path.rsplit("/", 1)[1] for path in mirror["requests"] if "/fashion/" in path}
    assert fetched == {f"{n}.gz" for n in NAMES} - {"train-images-idx3-ubyte.gz"}


def test_checksum_mismatch_is_one_line_and_keeps_no_file(tmp_path, mirror, monkeypatch):
    layout = idx.IDX_LAYOUTS["fashion-mnist"]
    md5 = dict(layout.remote.md5, **{"t10k-labels-idx1-ubyte": "0" * 32})
    monkeypatch.setitem(idx.IDX_LAYOUTS, "fashion-mnist", dataclasses.replace(
        layout, remote=dataclasses.replace(layout.remote, md5=md5)))
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumError) as info:
        fetch("fashion-mnist", data_dir=data_dir)
    message = str(info.value)
    served = hashlib.md5(mirror["blobs"]["t10k-labels-idx1-ubyte"]).hexdigest()
    assert "\n" not in message
    assert "t10k-labels-idx1-ubyte.gz" in message and served in message and "0" * 32 in message
    assert "not kept" in message
    folder = data_dir / "fashion-mnist"
    assert not (folder / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]  # no partial file
    # From the CLI: exit 2, that one line on stderr, no traceback.
    from lbtkit.cli import app

    result = CliRunner().invoke(app, ["fetch", "fashion-mnist", "--data-dir", str(data_dir)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "0" * 32 in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_sha256_is_checked_too(tmp_path, mirror, monkeypatch):
    layout = idx.IDX_LAYOUTS["fashion-mnist"]
    sha = dict(layout.remote.sha256, **{"train-labels-idx1-ubyte": "f" * 64})
    monkeypatch.setitem(idx.IDX_LAYOUTS, "fashion-mnist", dataclasses.replace(
        layout, remote=dataclasses.replace(layout.remote, sha256=sha)))
    with pytest.raises(ChecksumError, match=r"sha256 \w+ is not the published f{64}"):
        fetch("fashion-mnist", data_dir=tmp_path / "data")
    assert not (tmp_path / "data" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").exists()


def test_no_reachable_mirror_is_one_line(tmp_path, mirror, monkeypatch):
    layout = idx.IDX_LAYOUTS["fashion-mnist"]
    # A port nothing listens on: connection refused, as on a node without network.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    monkeypatch.setitem(idx.IDX_LAYOUTS, "fashion-mnist", dataclasses.replace(
        layout, remote=dataclasses.replace(layout.remote, mirrors=(dead,))))
    with pytest.raises(UserError) as info:
        fetch("fashion-mnist", data_dir=tmp_path / "data")
    message = str(info.value)
    assert not isinstance(info.value, ChecksumError)
    assert "\n" not in message and "refused" in message.lower() and "login node" in message
    assert not list((tmp_path / "data" / "fashion-mnist").iterdir())


def test_corrupt_local_copy_is_reported_not_downloaded_over(tmp_path, mirror):
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name, blob in mirror["blobs"].items():
        (folder / f"{name}.gz").write_bytes(blob)
    target = folder / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:40])  # truncated
    with pytest.raises(UserError, match=f"cannot read {target}"):
        fetch("fashion-mnist", data_dir=tmp_path / "data")
    assert mirror["requests"] == []


def test_download_flag_of_a_run_uses_the_same_code(tmp_path, mirror):
    ds = load_dataset("fashion-mnist", tmp_path / "data", download=True)
    assert ds.train_images.shape[0] == 6
    assert (tmp_path / "data" / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()


# --- doctor ----------------------------------------------------------------------------------


def _dataset_check(data_dir: Path):
    checks = collect_checks(data_dir=data_dir, dataset="fashion-mnist", pretrained="none",
                            output_dir=data_dir / "runs")
    [check] = [c for c in checks if c.name == "dataset fashion-mnist"]
    return check


def test_doctor_reports_where_and_how_big(tmp_path, mirror):
    data_dir = tmp_path / "data"
    missing = _dataset_check(data_dir)
    assert missing.status == "fail"
    assert "apt-get install dataset-fashion-mnist" in missing.fix
    assert f"lbtkit fetch fashion-mnist --data-dir {data_dir}" in missing.fix

    for name, blob in mirror["blobs"].items():  # the Debian package's copy only
        (mirror["system"] / f"{name}.gz").write_bytes(blob)
    system = _dataset_check(data_dir)
    assert system.status == "ok" and f"found in {mirror['system']}" in system.detail
    assert "dataset-fashion-mnist package" in system.detail and str(data_dir) in system.detail

    fetch("fashion-mnist", data_dir=data_dir)
    local = _dataset_check(data_dir)
    folder = data_dir / "fashion-mnist"
    assert local.status == "ok" and local.detail.startswith(f"found in {folder}: ")
    size = len(mirror["blobs"]["train-labels-idx1-ubyte"]) / 1024
    assert f"train-labels-idx1-ubyte.gz {size:.1f} KiB" in local.detail
    assert "package" not in local.detail


def test_doctor_prints_the_failure_and_its_fix(tmp_path, mirror):
    import io

    console = Console(file=io.StringIO(), width=200)
    code = run_doctor(data_dir=tmp_path / "nothing", dataset="fashion-mnist", pretrained="none",
                      output_dir=tmp_path / "runs", console=console)
    text = console.file.getvalue()
    [row] = [line for line in text.splitlines()
             if line.startswith(("ok", "warn", "fail")) and "dataset fashion-mnist" in line]
    assert code == 1 and row.split()[0] == "fail" and os.fspath(tmp_path / "nothing") in row
    assert "fix: apt-get install dataset-fashion-mnist, or" in text
