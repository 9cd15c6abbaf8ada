"""The one way Seed KMS writes files: atomically, and 0600 for secrets.

This is the only module in ``kms/`` that touches the file system (STYLE 4
keeps protocol code pure); it lives here because both the server and the
agent must write keys the same careful way (STYLE 13).

Files a user names on a command line go through ``open_output``, which never
replaces what is not a regular file:

- ``-``: standard output, written as it comes.
- a FIFO or a character device (``/dev/null``, a terminal), or a symbolic link
  to one (``/dev/stdout``): opened and written through, never renamed over.
- a regular file, or a new one: a temporary file in the same directory, then
  an atomic rename, so readers see the old file or the whole new one.
- a symbolic link to a regular file: refused, unless the caller passes
  ``follow_symlink`` (``--follow-symlinks`` on the command line); then the
  link is resolved and its target is replaced atomically, the link kept.
  Refused by default because a link planted where an output is expected would
  otherwise turn a write (often as root) into one of a file the user never named.
- anything else (a directory, a block device, a socket): refused.

Only the rename is all-or-nothing: what goes to stdout, a FIFO or a device
arrives as it is written, so a failure part-way leaves part of it there.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from kms.errors import InvalidArgument

__all__ = [
    "private_file",
    "STDIO",
    "atomic_output",
    "ensure_private_dir",
    "is_stdio",
    "open_input",
    "open_output",
    "output_is_regular",
    "write_atomic",
    "write_output",
]

# The file name that means standard input or standard output.
STDIO = "-"


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


def private_file(path: Path) -> Path:
    """path, created empty if absent, readable by its owner only (0600, whatever it was)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    os.chmod(path, 0o600)
    return path


def is_stdio(path: Path | str) -> bool:
    return str(path) == STDIO


def _stream(mode: int) -> bool:
    """Written through, never renamed over: a FIFO or a character device."""
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise InvalidArgument(f"cannot write {path}: a part of its directory is not a directory") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None


def _target(path: Path, follow_symlink: bool) -> tuple[Path, bool]:
    """Where the bytes go, and whether they are written through (True) or renamed into place.

    Raises:
        InvalidArgument: naming the path and what to do, for every output refused.
    """
    st = _lstat(path)
    if st is not None and stat.S_ISLNK(st.st_mode):
        try:
            followed: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            followed = None  # dangling: the link names a file to be made
        except OSError as exc:
            raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None
        if followed is not None and _stream(followed.st_mode):
            return path, True  # /dev/stdout and the like: there is nothing to rename over
        if not follow_symlink:
            raise InvalidArgument(
                f"{path} is a symbolic link: refusing to write through it; pass --follow-symlinks to replace"
                " the file it points to, or name that file"
            )
        resolved = Path(os.path.realpath(path))
        return _target(resolved, follow_symlink=False) if resolved != path else (resolved, False)
    if st is None:
        parent = path.parent
        if not parent.is_dir():
            raise InvalidArgument(f"cannot write {path}: the directory {parent} does not exist")
        return path, False
    if stat.S_ISREG(st.st_mode):
        return path, False
    if _stream(st.st_mode):
        return path, True
    what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file, FIFO or character device"
    raise InvalidArgument(f"cannot write {path}: it is {what}")


def output_is_regular(path: Path | str, *, follow_symlink: bool = False) -> bool:
    """Whether open_output(path) makes or replaces a regular file (False for -, a FIFO, a device)."""
    return not is_stdio(path) and not _target(Path(path), follow_symlink)[1]


@contextmanager
def open_output(path: Path | str, *, mode: int = 0o600, follow_symlink: bool = False) -> Iterator[BinaryIO]:
    """A file a user named for output (see the module docstring for what each kind gets).

    Raises:
        InvalidArgument: a missing directory, a symbolic link without follow_symlink,
            a directory or other file that cannot take the output; nothing is written.
    """
    if is_stdio(path):
        out = sys.stdout.buffer
        sys.stdout.flush()  # text printed before stays before
        yield out
        out.flush()
        return
    target, through = _target(Path(path), follow_symlink)
    if not through:
        parent = target.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InvalidArgument(f"cannot write {path}: the directory {parent} is not writable")
        with atomic_output(target, mode=mode) as f:
            yield f
        return
    # O_NOCTTY: a terminal named as output must not become our controlling terminal.
    try:
        fd = os.open(target, os.O_WRONLY | os.O_NOCTTY)
    except OSError as exc:
        raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None
    if not _stream(os.fstat(fd).st_mode):  # replaced between the check and the open
        os.close(fd)
        raise InvalidArgument(f"cannot write {path}: it changed while being opened; try again")
    with os.fdopen(fd, "wb") as f:
        yield f


def write_output(path: Path | str, data: bytes, *, mode: int = 0o600, follow_symlink: bool = False) -> None:
    """Writes data to a user-named output with open_output's rules."""
    with open_output(path, mode=mode, follow_symlink=follow_symlink) as f:
        f.write(data)


@contextmanager
def open_input(path: Path | str) -> Iterator[BinaryIO]:
    """A file a user named for input, or standard input for ``-`` (left open afterwards).

    Raises:
        InvalidArgument: the file cannot be opened, naming it and why.
    """
    if is_stdio(path):
        yield sys.stdin.buffer
        return
    try:
        f = Path(path).open("rb")  # noqa: SIM115 - closed by the with below; only opening errors are mapped
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    with f:
        yield f
