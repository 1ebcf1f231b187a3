"""Atomic writes: build in a temporary sibling, then rename over the target.

Why: a dataset or checkpoint half-written by a killed process must never replace a good one. Renames
within one filesystem are atomic on POSIX, so readers see either the old or the new version, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``target``; on success rename it to ``target``.

    If the body raises (or the process dies), the temporary directory is removed (or left as an
    ignorable ``.tmp-*`` sibling) and ``target`` is untouched. With ``overwrite=False`` an existing
    target is an error raised *before* any work is done.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_tree(tmp)
    if target.exists():
        # Move the old version aside first so the swap is two renames, never a half-deleted tree.
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``target`` and rename it over ``target`` when the body succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def check_writable(target: str | os.PathLike, inside: bool = False) -> None:
    """Fail fast, before long work, when ``target`` cannot be written.

    ``inside=False``: ``target`` is a file or store renamed into place, so its parent directory must
    accept new entries; ``inside=True``: ``target`` is a directory whose contents will be written. A
    missing directory is fine when its nearest existing ancestor is writable (it will be created).
    Raises ``PermissionError`` with one line naming the path and the reason. Tries a real file, because
    permission bits say nothing about a read-only mount or root.
    """
    target = Path(target)
    directory = target if inside else target.parent
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise PermissionError(f"cannot write {target}: {probe} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".fastpolicy-write-check-", dir=probe)
    except OSError as exc:
        raise PermissionError(f"cannot write {target}: {probe} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(name)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (stores, checkpoints and behaviour actors record it)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
