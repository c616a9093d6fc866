"""``lbtkit fetch``: download a data set or the pretrained weights on a machine with internet.

Compute nodes often have no internet. Run this on a login node, into the shared directories
that jobs read: data sets into ``--data-dir`` (the layout ``lbtkit.data`` reads), the ImageNet
MobileNetV2 weights into the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where
``--pretrained imagenet`` looks). Whatever is already present and intact is not downloaded
again, so fetching is also a cheap "is it there and readable" check.
"""

from __future__ import annotations

from pathlib import Path

from lbtkit.errors import ConfigError, DataNotFoundError, UserError

DATASETS = ("cifar10", "cifar100", "mnist")
FETCHABLE = (*DATASETS, "weights")

_NO_NETWORK_HINT = (
    "lbtkit fetch needs internet: run it on a login node, into the directory the jobs read"
)


def fetch(what: str, *, data_dir: str | Path = "data") -> Path:
    """Download ``what`` (cifar10 | cifar100 | mnist | weights) unless present; return where
    it is. ``data_dir`` is used by the data sets only; the weights go to the torch hub cache."""
    if what not in FETCHABLE:
        raise ConfigError(f"cannot fetch {what!r}; known: {', '.join(FETCHABLE)}")
    if what == "weights":
        return fetch_weights()
    return fetch_dataset(what, data_dir)


def fetch_dataset(name: str, data_dir: str | Path) -> Path:
    """Fetch a data set with torchvision's downloader and read it back with lbtkit's readers."""
    from lbtkit.data import load_dataset
    from lbtkit.doctor import dataset_files

    files = dataset_files(name, data_dir)
    if files is None:  # digits / synthetic: nothing to download
        raise ConfigError(f"{name!r} needs no download; fetchable: {', '.join(FETCHABLE)}")
    root = Path(data_dir).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the data directory {root}: {exc.strerror}") from None
    present = all(f.is_file() or f.with_name(f.name + ".gz").is_file() for f in files)
    try:
        load_dataset(name, root, download=not present)
    except DataNotFoundError as exc:
        if present:
            raise  # corrupt files: the reader's message names the file and the fix
        raise UserError(f"{_first_line(exc)}; {_NO_NETWORK_HINT}") from None
    return files[0].parent if name != "mnist" else root / "MNIST"


def fetch_weights() -> Path:
    """Fetch torchvision's ImageNet MobileNetV2 weights into the torch hub cache."""
    import torch.hub

    from lbtkit.doctor import imagenet_weights_path, weights_hash_ok
    from lbtkit.models.mobilenet import _IMAGENET_WEIGHTS

    path = imagenet_weights_path()
    if path.is_file():
        if weights_hash_ok(path):
            return path
        raise UserError(
            f"{path} is corrupt (its sha256 does not match its name): delete it and fetch again"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot write the torch hub cache {path.parent} ({exc.strerror}); set TORCH_HOME "
            "to a writable (shared) directory"
        ) from None
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(
            _IMAGENET_WEIGHTS.url, str(path), hash_prefix=match.group(1) if match else None,
            progress=True,
        )
    # URLError (no network, DNS) is an OSError; a hash mismatch is a RuntimeError.
    except (OSError, RuntimeError) as exc:
        raise UserError(
            f"downloading {_IMAGENET_WEIGHTS.url} into {path.parent} failed "
            f"({_first_line(exc)}); {_NO_NETWORK_HINT}"
        ) from None
    return path


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
