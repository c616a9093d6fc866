"""Which data files a run read, and their sha256: ``data_files`` for results.json.

Hashing Fashion-MNIST takes a tenth of a second and CIFAR-10 about half a second, so each hash
is computed once and cached, keyed by the file's path, size and modification time:

- next to the file, as ``NAME.sha256.json`` (``{"sha256", "size", "mtime_ns"}``), when its
  folder is writable and no installed package owns it (Debian's Fashion-MNIST, scikit-learn's
  digits);
- else in the user cache, ``$LBTKIT_CACHE_DIR`` or ``$XDG_CACHE_HOME/lbtkit`` or
  ``~/.cache/lbtkit``, under ``sha256/``, one small file per (path, size, mtime).

A changed file (other size or mtime) is hashed again. Writing a cache is best effort: a run
never fails because its cache could not be written.

A directory (an image folder's split) is recorded as one entry whose sha256 is that of its
manifest: the lines ``<sha256 of the file>  <path relative to the directory>``, one per
regular file in sorted order, each ending in a newline. Its cache is the user cache, keyed by
the directory and every file's path, size and mtime, so no file is written among the images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lbtkit.errors import UserError

SIDECAR_SUFFIX = ".sha256.json"
_CHUNK = 1 << 20


def user_cache_dir() -> Path:
    """Where hashes go when they cannot be kept next to their file."""
    if os.environ.get("LBTKIT_CACHE_DIR"):
        return Path(os.environ["LBTKIT_CACHE_DIR"]) / "sha256"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lbtkit" / "sha256"


def data_files(paths: Iterable[Path], *,
               sidecar_dirs: Iterable[Path] | None = None) -> list[dict[str, str]]:
    """``[{"path", "sha256"}]`` for the files (or directories) a data set was read from.

    ``sidecar_dirs`` are folders where no cache file is written next to the data (by default
    the folders an installed package owns); their hashes go to the user cache.
    """
    if sidecar_dirs is None:
        from lbtkit.data.registry import package_data_folders

        sidecar_dirs = package_data_folders()
    no_sidecar = {Path(d).absolute() for d in sidecar_dirs}
    records = []
    for path in paths:
        path = Path(path).absolute()
        digest = (directory_sha256(path) if path.is_dir()
                  else file_sha256(path, sidecar=path.parent not in no_sidecar))
        records.append({"path": str(path), "sha256": digest})
    return records


def file_sha256(path: Path, *, sidecar: bool = True) -> str:
    """The sha256 of ``path``, from a cache when the file is unchanged since it was hashed."""
    path = Path(path).absolute()
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    side = path.with_name(path.name + SIDECAR_SUFFIX)
    user = user_cache_dir() / f"{_key(str(path), key['size'], key['mtime_ns'])}.json"
    for cache in (side, user) if sidecar else (user,):
        cached = _read_cache(cache, key)
        if cached:
            return cached
    digest = _hash_file(path)
    record = json.dumps({**key, "sha256": digest, "path": str(path)}) + "\n"
    if not (sidecar and _writable(side.parent) and _write_cache(side, record)):
        _write_cache(user, record)
    return digest


def directory_sha256(folder: Path) -> str:
    """The sha256 of ``folder``'s manifest (see the module's docstring), cached by stat."""
    folder = Path(folder).absolute()
    files = sorted((p for p in folder.rglob("*")
                    if p.is_file() and not p.name.endswith(SIDECAR_SUFFIX)),
                   key=lambda p: p.relative_to(folder).as_posix())
    names = [p.relative_to(folder).as_posix() for p in files]
    stats = [p.stat() for p in files]
    listing = "\n".join(f"{name}\0{st.st_size}\0{st.st_mtime_ns}"
                        for name, st in zip(names, stats, strict=True))
    key = {"listing": hashlib.sha256(listing.encode()).hexdigest()}
    cache = user_cache_dir() / f"{_key(str(folder), key['listing'])}.json"
    cached = _read_cache(cache, key)
    if cached:
        return cached
    manifest = "".join(f"{_hash_file(p)}  {name}\n" for p, name in zip(files, names, strict=True))
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    _write_cache(cache, json.dumps({**key, "sha256": digest, "path": str(folder)}) + "\n")
    return digest


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


def _read_cache(path: Path, key: dict) -> str | None:
    """The cached sha256 if ``path`` holds one for exactly ``key``, else None."""
    from lbtkit.fileio import read_json

    try:
        record = read_json(path, kind=dict)
    except UserError:  # none yet, or damaged: hash again
        return None
    if any(record.get(k) != v for k, v in key.items()):
        return None
    digest = record.get("sha256")
    valid = isinstance(digest, str) and len(digest) == 64
    return digest if valid and all(c in "0123456789abcdef" for c in digest) else None


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _write_cache(path: Path, text: str) -> bool:
    """Write ``text`` atomically (a reader never sees half a record); False when it failed."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; other users of shared data read it
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False
