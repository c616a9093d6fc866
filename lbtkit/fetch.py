"""``lbtkit fetch``: download a data set or the pretrained weights on a machine with internet.

Compute nodes often have no internet. Run this on a login node, into the shared directories
that jobs read: data sets into ``--data-dir`` (the layout ``lbtkit.data`` reads), the ImageNet
MobileNetV2 weights into the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where
``--pretrained imagenet`` looks). Whatever is already present and intact is not downloaded
again, so fetching is also a cheap "is it there and readable" check.
"""

from __future__ import annotations

from pathlib import Path

from lbtkit.data.download import ChecksumError
from lbtkit.errors import ConfigError, DataNotFoundError, UserError

DATASETS = ("cifar10", "cifar100", "mnist", "fashion-mnist")
FETCHABLE = (*DATASETS, "weights")

_NO_NETWORK_HINT = (
    "lbtkit fetch needs internet: run it on a login node, into the directory the jobs read"
)


def fetch(what: str, *, data_dir: str | Path = "data") -> Path:
    """Download ``what`` (a data set of ``DATASETS``, or ``weights``) unless present; return
    where it is. ``data_dir`` is used by the data sets only; the weights go to the torch hub
    cache."""
    if what not in FETCHABLE:
        raise ConfigError(f"cannot fetch {what!r}; known: {', '.join(FETCHABLE)}")
    if what == "weights":
        return fetch_weights()
    return fetch_dataset(what, data_dir)


def fetch_dataset(name: str, data_dir: str | Path) -> Path:
    """Fetch a data set into ``data_dir`` (where ``--data-dir`` reads it) unless it is there,
    then read it back with lbtkit's readers; the folder that holds it.

    Fashion-MNIST comes from its published mirrors with the published md5s checked
    (``lbtkit.data.download``); CIFAR and MNIST through torchvision's downloader, which checks
    its own. A copy found only in a system folder (the Debian package) does not count: the jobs
    on other nodes read ``data_dir``.
    """
    from lbtkit.data import load_dataset
    from lbtkit.data.idx import IDX_LAYOUTS
    from lbtkit.data.registry import dataset_files

    if name not in DATASETS:
        raise ConfigError(f"{name!r} needs no download; fetchable: {', '.join(FETCHABLE)}")
    root = Path(data_dir).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the data directory {root}: {exc.strerror}") from None
    layout = IDX_LAYOUTS.get(name)
    # Only the folders under data_dir count as present, not a system copy.
    local = dataset_files(name, root) if layout is None else _local_idx_files(name, root)
    present = local is not None and all(f.is_file() for f in local)
    try:
        if layout is not None and layout.remote is not None and not present:
            from lbtkit.data.download import download_idx

            download_idx(name, root)
            present = True
        load_dataset(name, root, download=not present)
    except DataNotFoundError as exc:
        if present:
            raise  # corrupt files: the reader's message names the file and the fix
        raise UserError(f"{_first_line(exc)}; {_NO_NETWORK_HINT}") from None
    except ChecksumError:
        raise  # the message names the file, both checksums, and that nothing was kept
    except UserError as exc:  # no mirror reachable
        raise UserError(f"{_first_line(exc)}; {_NO_NETWORK_HINT}") from None
    files = dataset_files(name, root)  # now the ones under root: they come first
    assert files is not None
    return files[0].parent


def _local_idx_files(name: str, root: Path) -> list[Path] | None:
    from lbtkit.data.registry import dataset_files

    files = dataset_files(name, root)
    return files if files and all(root in f.parents for f in files) else None


def fetch_weights() -> Path:
    """Fetch torchvision's ImageNet MobileNetV2 weights into the torch hub cache."""
    import torch.hub

    from lbtkit.doctor import weights_hash_ok
    from lbtkit.models.mobilenet import imagenet_weights_path, imagenet_weights_url

    path, url = Path(imagenet_weights_path()), imagenet_weights_url()
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
            url, str(path), hash_prefix=match.group(1) if match else None,
            progress=True,
        )
    # URLError (no network, DNS) is an OSError; a hash mismatch is a RuntimeError.
    except (OSError, RuntimeError) as exc:
        raise UserError(
            f"downloading {url} into {path.parent} failed "
            f"({_first_line(exc)}); {_NO_NETWORK_HINT}"
        ) from None
    return path


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
