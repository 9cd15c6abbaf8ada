"""The one way Seed KMS writes files: atomically, and 0600 for secrets.

This is the only module in ``kms/`` that touches the file system (STYLE 4
keeps protocol code pure); it lives here because both the server and the
agent must write keys the same careful way (STYLE 13).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["ensure_private_dir", "write_atomic"]


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Writes data to path so that readers see the old file or the whole new one.

    The temporary file is created 0600 in the same directory (never readable by
    others, even for an instant), written, fsynced, chmod-ed to ``mode`` and
    renamed over path; then the directory is fsynced so the rename survives.
    """
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def ensure_private_dir(path: Path) -> None:
    """Creates path (and parents) if needed and makes it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
