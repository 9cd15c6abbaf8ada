"""The one way Seed KMS writes files: atomically, and 0600 for secrets.

This is the only module in ``kms/`` that touches the file system (STYLE 4
keeps protocol code pure); it lives here because both the server and the
agent must write keys the same careful way (STYLE 13).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_output", "ensure_private_dir", "write_atomic"]


@contextmanager
def atomic_output(path: Path, *, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yields a file that replaces path only if the block completes.

    The temporary file is created 0600 in the same directory (never readable by
    others, even for an instant), fsynced, chmod-ed to ``mode`` and renamed
    over path; then the directory is fsynced so the rename survives. If the
    block raises, the temporary file is removed and path is untouched.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Writes data to path so that readers see the old file or the whole new one."""
    with atomic_output(path, mode=mode) as f:
        f.write(data)


def ensure_private_dir(path: Path) -> None:
    """Creates path (and parents) if needed and makes it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
