"""Downloading published data files with their checksums verified, and nothing left half-done.

Each file is streamed into a temporary file next to its destination while its md5 (and sha256,
when one is known) is computed, compared with the published value, and only then renamed into
place (``os.replace``: atomic on one file system). A failed or mismatching download leaves no
file behind, so a later run never mistakes a partial file for the data set. Mirrors are tried in
order; the error names every mirror's failure in one line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from lbtkit.data.idx import IDX_FILES, IDX_LAYOUTS, idx_search_dirs
from lbtkit.errors import UserError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0  # per network operation (connect, each read), not for the whole file
_BLOCK = 1 << 20


class ChecksumError(UserError):
    """A downloaded file whose checksum is not the published one (it was not kept)."""


def download_verified(
    urls: Sequence[str],
    destination: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download the first of ``urls`` that works into ``destination``, verified.

    Raises ChecksumError when no mirror gave a matching file and one of them served a wrong
    one, UserError when none could be reached; ``destination`` exists afterwards only if it
    matched.
    """
    if md5 is None and sha256 is None:
        raise ValueError("download_verified needs an md5 or a sha256 to check against")
    destination.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    mismatches = 0
    for url in urls:
        try:
            _fetch_one(url, destination, md5=md5, sha256=sha256, timeout=timeout)
            return destination
        except ChecksumError as exc:
            mismatches += 1
            failures.append(str(exc))
        except OSError as exc:  # URLError, HTTPError, timeouts, a full disk
            failures.append(f"{url}: {_describe(exc)}")
        log.info("download failed: %s", failures[-1])
    # A mirror that served the wrong bytes is the news, whatever the others did.
    error = ChecksumError if mismatches else UserError
    raise error(f"could not download {destination.name}: {'; '.join(failures)}")


def _fetch_one(
    url: str, destination: Path, *, md5: str | None, sha256: str | None, timeout: float
) -> None:
    digests = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    handle, part = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.",
                                    suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as src:
            for block in iter(lambda: src.read(_BLOCK), b""):
                out.write(block)
                for digest in digests.values():
                    digest.update(block)
        for kind, expected in (("md5", md5), ("sha256", sha256)):
            got = digests[kind].hexdigest()
            if expected is not None and got != expected.lower():
                raise ChecksumError(
                    f"{url}: {kind} {got} is not the published {expected} (file not kept)"
                )
        os.replace(part, destination)
    finally:
        if os.path.exists(part):
            os.unlink(part)


def file_digest(path: Path, kind: str = "md5") -> str:
    """The hex digest of a file, read in blocks."""
    digest = hashlib.new(kind, usedforsecurity=False) if kind == "md5" else hashlib.new(kind)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_idx(name: str, data_dir: str | Path) -> Path:
    """Fetch IDX data set ``name``'s archives into its folder under ``data_dir`` (the first of
    ``idx_search_dirs``), skipping those already there with the published checksum; the
    folder. The caller reads the result back (``load_dataset``) to check its content."""
    remote = IDX_LAYOUTS[name].remote
    if remote is None:
        raise ValueError(f"{name!r} has no published mirrors here")
    folder = idx_search_dirs(name, data_dir)[0]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the data directory {folder}: {exc.strerror}") from None
    for basename in IDX_FILES:
        target = folder / f"{basename}.gz"
        md5, sha256 = remote.md5[basename], remote.sha256.get(basename)
        if target.is_file() and file_digest(target) == md5 and (
                sha256 is None or file_digest(target, "sha256") == sha256):
            continue
        download_verified([mirror + target.name for mirror in remote.mirrors], target,
                          md5=md5, sha256=sha256)
        log.info("downloaded %s", target)
    return folder


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # URLError wraps the socket error
    text = str(reason if reason is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
