"""kms/securefile.py: what each kind of output a user names gets (rename, write through, or a refusal)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from kms.errors import InvalidArgument
from kms.securefile import open_input, open_output, output_is_regular, write_output


def test_a_regular_file_is_replaced_atomically_0600(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"old")
    inode = out.stat().st_ino
    write_output(out, b"new")
    assert out.read_bytes() == b"new" and out.stat().st_ino != inode  # a new file, renamed in
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with pytest.raises(RuntimeError), open_output(out) as f:
        f.write(b"half")
        raise RuntimeError("failed part-way")
    assert out.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert not output_is_regular(fifo)
    write_output(fifo, b"through")
    reader.join(10)
    assert got == [b"through"] and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_symlinks(tmp_path: Path) -> None:
    target, link = tmp_path / "target", tmp_path / "link"
    target.write_bytes(b"keep")
    link.symlink_to(target)
    with pytest.raises(InvalidArgument, match="symbolic link.*--follow-symlinks"):
        write_output(link, b"x")
    assert target.read_bytes() == b"keep"
    write_output(link, b"followed", follow_symlink=True)
    assert link.is_symlink() and target.read_bytes() == b"followed"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "made")
    with pytest.raises(InvalidArgument, match="symbolic link"):
        write_output(dangling, b"x")
    write_output(dangling, b"made", follow_symlink=True)
    assert (tmp_path / "made").read_bytes() == b"made" and dangling.is_symlink()
    # A link to a stream (as /dev/stdout is) needs no flag: nothing is renamed over.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    to_fifo = tmp_path / "to-fifo"
    to_fifo.symlink_to(fifo)
    assert not output_is_regular(to_fifo)


@pytest.mark.parametrize(
    "make, needle",
    [
        pytest.param(
            lambda p: p / "no" / "dir" / "out", "the directory .*no/dir does not exist", id="missing-dir"
        ),
        pytest.param(lambda p: p, "it is a directory", id="directory"),
        pytest.param(
            lambda p: (p / "f").write_bytes(b"") or p / "f" / "out", "not a directory", id="file-as-dir"
        ),
    ],
)
def test_refusals_are_one_clear_error(tmp_path: Path, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=needle):
        write_output(make(tmp_path), b"x")


def test_dash_is_stdio(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert not output_is_regular("-")
    write_output("-", b"to stdout")
    assert capfdbinary.readouterr().out == b"to stdout"


def test_input_errors_name_the_file(tmp_path: Path) -> None:
    with (
        pytest.raises(InvalidArgument, match="cannot read .*missing: No such file"),
        open_input(tmp_path / "missing"),
    ):
        pass
