"""Tests for lbtkit.data: on-disk readers, the registry, and the on-device batch path."""

from __future__ import annotations

import builtins
import codecs
import gzip
import os
import pickle
import shlex
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lbtkit.data import (
    DATASETS,
    EpochDraw,
    ImageData,
    augment,
    dataset_info,
    draw_epoch,
    iter_batches,
    load_dataset,
    normalize,
)
from lbtkit.data.digits import DIGITS_NUM_VAL, digits_split
from lbtkit.errors import ConfigError, DataNotFoundError, UserError

from helpers import FASHION_FILES, require_real_fashion_mnist

# --------------------------------------------------------------------------------------------
# Writers for the real on-disk formats


def _cifar_dict(data: np.ndarray, labels: list[int], label_key: bytes, batch_label: bytes) -> dict:
    entry = {
        b"batch_label": batch_label,
        label_key: labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    if label_key == b"fine_labels":
        entry[b"coarse_labels"] = [y % 20 for y in labels]
    return entry


def _dump(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the original files


def write_cifar10(
    root: Path, sizes: tuple[int, ...] = (3, 4, 5, 2, 6), n_val: int = 4, seed: int = 0
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Five train batches of the given sizes plus a test batch; returns what was written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, (*sizes, n_val), strict=True):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        _dump(folder / name, _cifar_dict(data, labels, b"labels", name.encode()))
        written[name] = (data, labels)
    return written


def write_cifar100(root: Path, n_train: int = 7, n_val: int = 5) -> dict:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, n in (("train", n_train), ("test", n_val)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100, size=n).tolist()
        labels[0] = 99  # the top class must be accepted
        _dump(folder / name, _cifar_dict(data, labels, b"fine_labels", name.encode()))
        written[name] = (data, labels)
    return written


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def write_mnist(root: Path, gz: bool, n_train: int = 6, n_val: int = 3) -> dict:
    rng = np.random.default_rng(2)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    suffix = ".gz" if gz else ""
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x00000803)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x00000801)
        written[prefix] = (images, labels)
    return written


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_is_consistent() -> None:
    assert set(DATASETS) == {"cifar10", "cifar100", "mnist", "fashion-mnist", "digits",
                             "synthetic"}
    for name, info in DATASETS.items():
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.channels
        assert all(s > 0 for s in info.std)
        assert 0 <= info.crop_padding < info.image_size
    assert dataset_info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert dataset_info("mnist").flip is False and dataset_info("mnist").crop_padding == 2
    # Keskar's F1 protocol trains on the raw images.
    fashion = dataset_info("fashion-mnist")
    assert (fashion.flip, fashion.crop_padding, fashion.image_size) == (False, 0, 28)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ConfigError) as err:
        dataset_info("imagenet")
    assert "imagenet" in str(err.value)
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(ConfigError):
        load_dataset("imagenet", "/nowhere")


def test_real_datasets_keep_native_size_and_class_count(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    # image_size is the model's input size; stored images stay native (resized at input time).
    ds = load_dataset("mnist", tmp_path, image_size=224, num_classes=10)
    assert ds.info == DATASETS["mnist"] and ds.train_images.shape[-2:] == (28, 28)
    with pytest.raises(ConfigError, match="num_classes=5"):
        load_dataset("mnist", tmp_path, num_classes=5)
    with pytest.raises(ConfigError, match="num_classes=5"):
        load_dataset("digits", tmp_path, num_classes=5)


# --------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_round_trip(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    # Mark known positions in each colour plane of sample 0 of the test batch.
    data, labels = written["test_batch"]
    data[0, 5 * 32 + 7] = 11  # R plane, (y, x) = (5, 7)
    data[0, 1024 + 2 * 32 + 30] = 22  # G plane, (2, 30)
    data[0, 2048 + 31 * 32 + 0] = 33  # B plane, (31, 0)
    _dump(
        tmp_path / "cifar-10-batches-py" / "test_batch",
        _cifar_dict(data, labels, b"labels", b"test"),
    )

    ds = load_dataset("cifar10", tmp_path)
    assert ds.info == DATASETS["cifar10"]
    train_order = [f"data_batch_{i}" for i in range(1, 6)]
    expect_x = np.concatenate([written[n][0] for n in train_order]).reshape(-1, 3, 32, 32)
    expect_y = [y for n in train_order for y in written[n][1]]
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.is_contiguous()
    assert ds.train_labels.dtype == torch.int64
    assert torch.equal(ds.train_images, torch.from_numpy(expect_x))
    assert ds.train_labels.tolist() == expect_y
    assert torch.equal(ds.val_images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert ds.val_labels.tolist() == labels
    assert ds.val_images[0, 0, 5, 7] == 11
    assert ds.val_images[0, 1, 2, 30] == 22
    assert ds.val_images[0, 2, 31, 0] == 33


def test_cifar100_round_trip(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.info.num_classes == 100
    for split, name in (("train", "train"), ("val", "test")):
        data, labels = written[name]
        assert torch.equal(
            getattr(ds, f"{split}_images"), torch.from_numpy(data.reshape(-1, 3, 32, 32))
        )
        assert getattr(ds, f"{split}_labels").tolist() == labels


def _py2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _py2_int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """The opcodes Python 2's cPickle wrote for the original CIFAR files (numpy 1.x arrays,
    py2 ``str`` keys and raw data, numpy.core module path), emitted by hand."""
    n, row = data.shape
    s, i = _py2_str, _py2_int
    dtype = b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
    dtype += b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85"
    array += s(b"b") + b"\x87R"
    array += b"(" + i(1) + i(n) + i(row) + b"\x86" + dtype + b"\x89" + s(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(i(y) for y in labels) + b"e"
    body = s(b"batch_label") + s(b"testing batch 1 of 1") + s(b"labels") + label_list
    return b"\x80\x02}(" + body + s(b"data") + array + b"u."


def test_cifar_reads_python2_pickles(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    data = np.random.default_rng(5).integers(0, 256, size=(3, 3072), dtype=np.uint8)
    blob = py2_cifar_pickle(data, [7, 0, 9])
    assert pickle.loads(blob, encoding="latin1")["labels"] == [7, 0, 9]  # the emitter is sane
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.val_labels.tolist() == [7, 0, 9]
    assert torch.equal(ds.val_images, torch.from_numpy(data.reshape(3, 3, 32, 32)))


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class _OpensFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (builtins.open, (self.path, "w"))


def test_tampered_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    target = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    payload = {b"data": _RunsCommand(f"touch {shlex.quote(str(marker))}"), b"labels": [0]}
    _dump(target, payload)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    assert str(target) in str(err.value)
    assert "system" in str(err.value)
    assert not marker.exists()


def test_tampered_pickle_payload_is_live_but_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    _dump(target, {b"data": _OpensFile(str(marker)), b"labels": [0]})
    # Positive control: a plain unpickler really does run the payload...
    pickle.loads(target.read_bytes())[b"data"].close()
    assert marker.exists()
    marker.unlink()
    # ...ours refuses it.
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_allowed_codecs_global_is_restricted_to_latin1(tmp_path: Path) -> None:
    class _Rot13:
        def __reduce__(self) -> tuple:
            return (codecs.encode, ("abc", "rot13"))

    write_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    _dump(target, {b"data": _Rot13(), b"labels": [0]})
    with pytest.raises(DataNotFoundError, match="test_batch"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"not a pickle at all",
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2),
        pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, protocol=2),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2),
        pickle.dumps({b"labels": [0, 1]}, protocol=2),
        pickle.dumps([1, 2, 3], protocol=2),
    ],
    ids=["garbage", "shape", "dtype", "label-count", "label-range", "no-data", "not-a-dict"],
)
def test_corrupt_cifar_file_names_the_file(tmp_path: Path, content: bytes) -> None:
    write_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(content)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    assert str(target) in str(err.value)


def test_truncated_cifar_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    target.write_bytes(target.read_bytes()[:200])
    with pytest.raises(DataNotFoundError, match="test_batch"):
        load_dataset("cifar10", tmp_path)


def test_protocol5_pickle_is_readable(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    data = np.arange(3072 * 2, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    target.write_bytes(pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=5))
    ds = load_dataset("cifar10", tmp_path)
    assert torch.equal(ds.val_images, torch.from_numpy(data.reshape(2, 3, 32, 32)))


@pytest.mark.parametrize(
    "name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_missing_cifar_dir(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(name, tmp_path)
    message = str(err.value)
    assert str(tmp_path / folder) in message
    assert "--download" in message
    assert name in message
    assert isinstance(err.value, UserError)


def test_missing_cifar_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_4") in str(err.value)
    assert "--download" in str(err.value)


def test_download_uses_torchvision_then_our_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            if not (Path(root) / "cifar-10-batches-py").exists():
                write_cifar10(Path(root), sizes=(1, 1, 1, 1, 1), n_val=1)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = load_dataset("cifar10", tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert ds.train_images.shape == (5, 3, 32, 32)


def test_download_failure_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataNotFoundError, match="no network") as err:
        load_dataset("mnist", tmp_path, download=True)
    assert str(tmp_path) in str(err.value)


# --------------------------------------------------------------------------------------------
# MNIST


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    written = write_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", tmp_path)
    for split, prefix in (("train", "train"), ("val", "t10k")):
        images, labels = written[prefix]
        got = getattr(ds, f"{split}_images")
        assert got.shape == (len(labels), 1, 28, 28) and got.dtype == torch.uint8
        assert torch.equal(got[:, 0], torch.from_numpy(images))
        assert getattr(ds, f"{split}_labels").tolist() == labels.tolist()


def test_mnist_wrong_magic_names_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    target = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    write_idx(target, np.zeros(3, np.uint8), 0x00000802)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", tmp_path)
    assert str(target) in str(err.value)
    assert "magic" in str(err.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_size_mismatch_names_file(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    target = tmp_path / "MNIST" / "raw" / f"train-images-idx3-ubyte{'.gz' if gz else ''}"
    blob = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (6, 28, 28))
    blob += bytes(6 * 28 * 28 - 1)  # one byte short
    if gz:
        target.write_bytes(gzip.compress(blob))
    else:
        target.write_bytes(blob)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", tmp_path)
    assert str(target) in str(err.value)


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    target = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    write_idx(target, np.zeros(5, np.uint8), 0x00000801)
    with pytest.raises(DataNotFoundError, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(err.value)
    assert "--download" in str(err.value)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: --data-dir first, then the Debian package's folder



@pytest.fixture
def system_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The Debian folder, moved to an empty temporary directory (so the installed package does
    not take part unless a test puts files there)."""
    import dataclasses

    from lbtkit.data import idx

    folder = tmp_path / "usr-share-datasets-fashion-mnist"
    folder.mkdir()
    layout = dataclasses.replace(idx.IDX_LAYOUTS["fashion-mnist"], system_folders=(folder,))
    monkeypatch.setitem(idx.IDX_LAYOUTS, "fashion-mnist", layout)
    return folder


def write_fashion(folder: Path, n_train: int = 7, n_val: int = 4, seed: int = 3) -> dict:
    """The four files in the real format (gzipped, as published), small."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 0x00000803)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x00000801)
        written[prefix] = (images, labels)
    return written


def test_fashion_mnist_round_trip_from_data_dir(tmp_path: Path, system_folder: Path) -> None:
    from lbtkit.data.registry import dataset_files

    written = write_fashion(tmp_path / "data" / "fashion-mnist")
    write_fashion(system_folder, n_train=3, n_val=2, seed=9)  # must not be used
    ds = load_dataset("fashion-mnist", tmp_path / "data")
    assert ds.info.name == "fashion-mnist" and ds.train_images.shape == (7, 1, 28, 28)
    for split, prefix in (("train", "train"), ("val", "t10k")):
        images, labels = written[prefix]
        assert torch.equal(getattr(ds, f"{split}_images")[:, 0], torch.from_numpy(images))
        assert getattr(ds, f"{split}_labels").tolist() == labels.tolist()
    files = dataset_files("fashion-mnist", tmp_path / "data")
    assert files == [tmp_path / "data" / "fashion-mnist" / f"{f}.gz" for f in FASHION_FILES]


def test_fashion_mnist_falls_back_to_the_system_folder(tmp_path: Path,
                                                       system_folder: Path) -> None:
    from lbtkit.data.idx import idx_search_dirs
    from lbtkit.data.registry import dataset_files

    written = write_fashion(system_folder, n_train=5, n_val=2)
    # An incomplete copy under --data-dir is skipped as a whole, not mixed with the other.
    partial = tmp_path / "data" / "fashion-mnist"
    write_fashion(partial, n_train=3, n_val=3, seed=8)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    ds = load_dataset("fashion-mnist", tmp_path / "data")
    assert ds.train_labels.tolist() == written["train"][1].tolist()
    assert dataset_files("fashion-mnist", tmp_path / "data")[0].parent == system_folder
    assert idx_search_dirs("fashion-mnist", tmp_path / "data") == [
        partial, tmp_path / "data" / "FashionMNIST" / "raw", system_folder]


def test_fashion_mnist_reads_torchvision_layout_uncompressed(tmp_path: Path,
                                                             system_folder: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        n = 3 if name.startswith("train") else 2
        if "images" in name:
            write_idx(raw / name, np.full((n, 28, 28), 7, np.uint8), 0x00000803)
        else:
            write_idx(raw / name, np.arange(n, dtype=np.uint8), 0x00000801)
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.train_labels.tolist() == [0, 1, 2] and int(ds.val_images.max()) == 7


def test_fashion_mnist_missing_says_where_and_how(tmp_path: Path, system_folder: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist", tmp_path)
    message = str(err.value)
    assert "\n" not in message
    for text in (str(tmp_path / "fashion-mnist"), str(system_folder),
                 "apt-get install dataset-fashion-mnist",
                 f"lbtkit fetch fashion-mnist --data-dir {tmp_path}"):
        assert text in message


def _truncate_gzip(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _wrong_magic(path: Path) -> None:
    write_idx(path, np.zeros((7, 28, 28), np.uint8), 0x00000801)


def _labels_out_of_range(path: Path) -> None:
    write_idx(path, np.array([0, 1, 2, 3, 4, 5, 10], np.uint8), 0x00000801)


def _too_few_labels(path: Path) -> None:
    write_idx(path, np.zeros(6, np.uint8), 0x00000801)


def _not_gzip(path: Path) -> None:
    path.write_bytes(b"this is not a gzip stream at all")


@pytest.mark.parametrize(("damage", "filename", "needle"), [
    (_truncate_gzip, "train-images-idx3-ubyte.gz", "EOFError"),
    (_not_gzip, "t10k-images-idx3-ubyte.gz", "BadGzipFile"),
    (_wrong_magic, "train-images-idx3-ubyte.gz", "bad IDX magic number 0x00000801"),
    (_labels_out_of_range, "train-labels-idx1-ubyte.gz", "labels outside 0..9 (found 0..10)"),
    (_too_few_labels, "train-labels-idx1-ubyte.gz", "6 labels but"),
])
def test_bad_fashion_file_is_one_line_naming_it(tmp_path: Path, system_folder: Path, damage,
                                                filename: str, needle: str) -> None:
    folder = tmp_path / "fashion-mnist"
    write_fashion(folder)
    damage(folder / filename)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist", tmp_path)
    message = str(err.value)
    assert "\n" not in message and needle in message, message
    assert message.startswith(f"cannot read {folder / filename}:"), message
    assert isinstance(err.value, UserError)  # the CLI prints it as one line and exits 2


def test_bad_file_in_the_system_folder_says_reinstall(tmp_path: Path,
                                                      system_folder: Path) -> None:
    write_fashion(system_folder)
    _truncate_gzip(system_folder / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataNotFoundError, match=r"apt-get install --reinstall dataset-fashion"):
        load_dataset("fashion-mnist", tmp_path)


def test_bad_fashion_file_from_the_cli_exits_2(tmp_path: Path, system_folder: Path) -> None:
    from helpers import assert_user_error, run_cli, scaled_timeout

    folder = tmp_path / "data" / "fashion-mnist"
    write_fashion(folder)
    _wrong_magic(folder / "train-images-idx3-ubyte.gz")
    result = run_cli("run", "--preset", "keskar-f1-fashion", "--data-dir", tmp_path / "data",
                     "--epochs", "1", "--output", tmp_path / "run", "--no-progress",
                     tmp_path=tmp_path, timeout=scaled_timeout(120))
    assert_user_error(result, f"cannot read {folder / 'train-images-idx3-ubyte.gz'}: bad IDX magic")




def test_real_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    require_real_fashion_mnist()
    ds = load_dataset("fashion-mnist", tmp_path / "empty-data-dir")
    assert ds.train_images.shape == (60_000, 1, 28, 28)
    assert ds.val_images.shape == (10_000, 1, 28, 28)
    for labels in (ds.train_labels, ds.val_labels):
        assert labels.min().item() == 0 and labels.max().item() == 9
    # Balanced classes, as published: 6,000 and 1,000 images of each.
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.val_labels).tolist() == [1000] * 10
    # The normalisation constants in the registry are this training set's.
    pixels = ds.train_images.double() / 255
    assert pixels.mean().item() == pytest.approx(ds.info.mean[0], abs=1e-6)
    assert pixels.std(unbiased=False).item() == pytest.approx(ds.info.std[0], abs=1e-6)


# --------------------------------------------------------------------------------------------
# digits and synthetic


def test_digits_split_and_statistics() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", "/ignored")
    assert len(ds.train_labels) + len(ds.val_labels) == 1797
    assert len(ds.val_labels) == DIGITS_NUM_VAL == 360
    assert ds.train_images.shape == (1437, 1, 8, 8)
    assert set(ds.train_labels.tolist()) == set(range(10))
    assert set(ds.val_labels.tolist()) == set(range(10))

    # The split is fixed: the same indices every call, disjoint, covering every sample.
    train_idx, val_idx = digits_split()
    again_train, again_val = digits_split()
    assert np.array_equal(train_idx, again_train) and np.array_equal(val_idx, again_val)
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(1797))
    again = load_dataset("digits", "/elsewhere")
    assert torch.equal(ds.val_images, again.val_images)
    assert torch.equal(ds.train_labels, again.train_labels)

    # Pixel mapping: round(v * 255 / 16) of sklearn's 0..16 values.
    bunch = load_digits()
    expect = np.rint(bunch.data[val_idx] * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8)
    assert torch.equal(ds.val_images, torch.from_numpy(expect))
    assert ds.val_labels.tolist() == bunch.target[val_idx].tolist()

    pixels = ds.train_images.double() / 255
    assert abs(pixels.mean().item() - ds.info.mean[0]) < 1e-4
    assert abs(pixels.std(unbiased=False).item() - ds.info.std[0]) < 1e-4


def test_synthetic_is_deterministic_and_shaped() -> None:
    a = load_dataset("synthetic", "/ignored")
    b = load_dataset("synthetic", "/ignored")
    for field in ("train_images", "train_labels", "val_images", "val_labels"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.train_images.shape == (2048, 3, 32, 32) and a.val_images.shape == (512, 3, 32, 32)
    assert a.info == DATASETS["synthetic"]

    c = load_dataset("synthetic", "/ignored", image_size=12, num_classes=4)
    assert c.train_images.shape == (2048, 3, 12, 12) and c.val_images.shape == (512, 3, 12, 12)
    assert c.info.image_size == 12 and c.info.num_classes == 4
    assert set(c.train_labels.tolist()) == set(range(4))
    assert DATASETS["synthetic"].image_size == 32  # the registry entry is untouched


def test_synthetic_is_learnable() -> None:
    ds = load_dataset("synthetic", "/ignored")
    train = ds.train_images.float().flatten(1)
    centroids = torch.stack([train[ds.train_labels == k].mean(0) for k in range(10)])

    def accuracy(images: torch.Tensor) -> float:
        pred = torch.cdist(images.float().flatten(1), centroids).argmin(1)
        return (pred == ds.val_labels).float().mean().item()

    assert accuracy(ds.val_images) > 0.9
    # Still far above chance (0.1) under the standard augmentation.
    draw = draw_epoch(512, seed=0, epoch=0, padding=4, flip=True)
    assert accuracy(augment(ds.val_images, draw.shifts, draw.flips, padding=4)) > 0.4


@pytest.mark.parametrize(
    "kwargs", [{"image_size": 4}, {"num_classes": 1}, {"num_classes": 100_000}]
)
def test_synthetic_rejects_bad_sizes(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=str(next(iter(kwargs.values())))):
        load_dataset("synthetic", "/ignored", **kwargs)


def test_image_data_to_and_validation() -> None:
    ds = load_dataset("synthetic", "/ignored", image_size=8)
    moved = ds.to("cpu")
    assert moved.info == ds.info and torch.equal(moved.val_images, ds.val_images)
    with pytest.raises(ValueError):
        ImageData(ds.info, ds.train_images.float(), ds.train_labels, ds.val_images, ds.val_labels)


# --------------------------------------------------------------------------------------------
# draw_epoch


def test_draw_epoch_determinism_and_ranges() -> None:
    n, p = 1000, 4
    a = draw_epoch(n, seed=3, epoch=7, padding=p, flip=True)
    b = draw_epoch(n, seed=3, epoch=7, padding=p, flip=True)
    assert isinstance(a, EpochDraw)
    assert a.order.dtype == torch.int64 and a.shifts.dtype == torch.int64
    assert a.flips.dtype == torch.bool
    assert a.shifts.shape == (n, 2) and a.flips.shape == (n,)
    assert torch.equal(a.order.sort().values, torch.arange(n))
    for x, y in ((a.order, b.order), (a.shifts, b.shifts), (a.flips, b.flips)):
        assert torch.equal(x, y)
    assert not torch.equal(a.order, draw_epoch(n, seed=3, epoch=8, padding=p, flip=True).order)
    assert not torch.equal(a.order, draw_epoch(n, seed=4, epoch=7, padding=p, flip=True).order)
    assert int(a.shifts.min()) >= 0 and int(a.shifts.max()) <= 2 * p

    no_flip = draw_epoch(n, seed=3, epoch=7, padding=p, flip=False)
    assert not bool(no_flip.flips.any())
    assert torch.equal(no_flip.order, a.order)  # augmentation settings never change the order
    no_pad = draw_epoch(n, seed=3, epoch=7, padding=0, flip=True)
    assert not bool(no_pad.shifts.any())
    assert draw_epoch(0, seed=0, epoch=0, padding=2, flip=True).order.numel() == 0


def test_draw_epoch_statistics() -> None:
    n, p = 4000, 4
    draw = draw_epoch(n, seed=11, epoch=2, padding=p, flip=True)
    assert abs(draw.flips.float().mean().item() - 0.5) < 0.05
    expected = n / (2 * p + 1)
    for axis in range(2):
        counts = torch.bincount(draw.shifts[:, axis], minlength=2 * p + 1)
        assert counts.numel() == 2 * p + 1
        assert bool(((counts - expected).abs() < 0.2 * expected).all()), counts


# --------------------------------------------------------------------------------------------
# augment


def _reference_augment(
    images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, padding: int, mode: str
) -> torch.Tensor:
    """Per-sample, obviously-correct version: pad with F.pad, slice, maybe mirror."""
    out = []
    _, _, h, w = images.shape
    for img, (dy, dx), flip in zip(images, shifts.tolist(), flips.tolist(), strict=True):
        x = img[None].double()
        if padding:
            pad_mode = "constant" if mode == "zeros" else "reflect"
            x = F.pad(x, (padding,) * 4, mode=pad_mode)
        window = x[0, :, dy : dy + h, dx : dx + w]
        if flip:
            window = window.flip(-1)
        out.append(window.to(torch.uint8))
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
@pytest.mark.parametrize(
    "padding, shape",
    [(4, (3, 32, 32)), (2, (1, 28, 28)), (1, (1, 8, 8)), (3, (2, 7, 11)), (0, (3, 5, 5))],
)
def test_augment_matches_per_sample_reference(
    mode: str, padding: int, shape: tuple[int, int, int]
) -> None:
    gen = torch.Generator().manual_seed(padding)
    images = torch.randint(0, 256, (64, *shape), generator=gen, dtype=torch.uint8)
    draw = draw_epoch(64, seed=5, epoch=1, padding=padding, flip=True)
    out = augment(images, draw.shifts, draw.flips, padding=padding, padding_mode=mode)
    assert out.dtype == torch.uint8 and out.shape == images.shape and out.is_contiguous()
    assert torch.equal(out, _reference_augment(images, draw.shifts, draw.flips, padding, mode))
    assert 0 < int(draw.flips.sum()) < 64  # both branches were exercised


def test_augment_flip_is_exact_mirror_and_identity() -> None:
    images = torch.randint(0, 256, (16, 3, 9, 9), dtype=torch.uint8)
    centre = torch.full((16, 2), 3, dtype=torch.int64)
    none = torch.zeros(16, dtype=torch.bool)
    assert torch.equal(augment(images, centre, none, padding=3), images)
    assert torch.equal(augment(images, centre, none, padding=3, padding_mode="zeros"), images)
    every = torch.ones(16, dtype=torch.bool)
    assert torch.equal(augment(images, centre, every, padding=3), images.flip(-1))


def test_augment_channels_last_input() -> None:
    images = torch.randint(0, 256, (8, 3, 10, 10), dtype=torch.uint8)
    draw = draw_epoch(8, seed=1, epoch=0, padding=2, flip=True)
    expect = augment(images, draw.shifts, draw.flips, padding=2)
    cl = images.contiguous(memory_format=torch.channels_last)
    assert torch.equal(augment(cl, draw.shifts, draw.flips, padding=2), expect)


def test_batch_via_order_keeps_labels_aligned() -> None:
    n = 200
    labels = torch.randint(0, 10, (n,))
    # Each image is constant at 20 * label, so any crop/flip of it still reveals its label.
    images = (labels * 20).to(torch.uint8)[:, None, None, None].expand(n, 3, 8, 8).contiguous()
    draw = draw_epoch(n, seed=9, epoch=4, padding=2, flip=True)
    for batch in iter_batches(n, 64):
        idx = draw.order[batch]
        x = augment(images[idx], draw.shifts[idx], draw.flips[idx], padding=2)
        y = labels[idx]
        assert torch.equal(x.amax(dim=(1, 2, 3)), (y * 20).to(torch.uint8))
        assert torch.equal(x.amin(dim=(1, 2, 3)), (y * 20).to(torch.uint8))


def test_augment_rejects_bad_arguments() -> None:
    images = torch.zeros(4, 1, 3, 3, dtype=torch.uint8)
    shifts = torch.zeros(4, 2, dtype=torch.int64)
    flips = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(ConfigError, match="circular"):
        augment(images, shifts, flips, padding=1, padding_mode="circular")
    with pytest.raises(ConfigError, match="reflect padding 3"):
        augment(images, shifts, flips, padding=3)
    with pytest.raises(ValueError):
        augment(images, shifts[:3], flips, padding=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_and_normalize_on_cuda_match_cpu() -> None:
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    draw = draw_epoch(32, seed=1, epoch=0, padding=4, flip=True)
    gpu = draw_epoch(32, seed=1, epoch=0, padding=4, flip=True, device="cuda")
    assert torch.equal(gpu.order.cpu(), draw.order)
    for mode in ("reflect", "zeros"):
        cpu_out = augment(images, draw.shifts, draw.flips, padding=4, padding_mode=mode)
        gpu_out = augment(images.cuda(), gpu.shifts, gpu.flips, padding=4, padding_mode=mode)
        assert torch.equal(gpu_out.cpu(), cpu_out)
    info = DATASETS["cifar10"]
    torch.testing.assert_close(
        normalize(images.cuda(), info.mean, info.std).cpu(),
        normalize(images, info.mean, info.std),
        atol=1e-6,
        rtol=0,
    )


# --------------------------------------------------------------------------------------------
# normalize and iter_batches


def test_normalize_matches_plain_formula() -> None:
    info = DATASETS["cifar10"]
    images = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    images[0, :, 0, 0] = 0
    images[0, :, 0, 1] = 255
    mean = torch.tensor(info.mean, dtype=torch.float64)[None, :, None, None]
    std = torch.tensor(info.std, dtype=torch.float64)[None, :, None, None]
    expect = (images.double() / 255 - mean) / std
    out = normalize(images, info.mean, info.std)
    assert out.dtype == torch.float32 and out.shape == images.shape
    torch.testing.assert_close(out.double(), expect, atol=1e-6, rtol=0)

    cl = normalize(images, info.mean, info.std, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl.double(), expect, atol=1e-6, rtol=0)

    half = normalize(images, info.mean, info.std, dtype=torch.bfloat16, channels_last=True)
    assert half.dtype == torch.bfloat16
    assert half.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(half.double(), expect, atol=0.02, rtol=0.01)


def test_normalize_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match="3 values"):
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), (0.5,), (0.5,))


def test_iter_batches_keeps_last_partial_batch() -> None:
    batches = list(iter_batches(10, 4))
    assert batches == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(iter_batches(8, 4)) == [slice(0, 4), slice(4, 8)]
    assert list(iter_batches(0, 4)) == []
    with pytest.raises(ConfigError):
        list(iter_batches(10, 0))
