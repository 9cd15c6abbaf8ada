"""Errors a new user hit (issue 17 §5), each one line with the right exit code, from the real CLIs.

No store plays a part in these: they run on SQLite only.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tests.harness import assert_one_line_error, exe, run

pytestmark = pytest.mark.sqlite_only("command-line errors before or beside the store")


def _tar(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))


@pytest.mark.parametrize(
    "make, code, needle",
    [
        pytest.param(lambda p: p.write_bytes(b"not a backup\n" * 40), 2, "not a tar archive", id="text"),
        pytest.param(lambda p: p.write_bytes(b""), 2, "not a tar archive", id="empty"),
        pytest.param(_tar, 2, "is not a kms-server backup", id="other-tar"),
        pytest.param(lambda p: p.mkdir(), 2, "cannot read backup", id="directory"),
        pytest.param(lambda p: None, 2, "No such file or directory", id="missing"),
    ],
)
def test_restore_of_a_file_that_is_not_a_backup(tmp_path: Path, make, code: int, needle: str) -> None:  # type: ignore[no-untyped-def]
    source, master, target = tmp_path / "backup.tar", tmp_path / "master.key", tmp_path / "new"
    make(source)
    master.write_bytes(b"k" * 32)
    result = run(
        [exe("kms-server"), "restore", str(source), "--master-key", str(master), "--data-dir", str(target)]
    )
    assert_one_line_error(result, code, needle)
    assert "method gz" not in result.stderr
    assert not target.exists()  # nothing written before the backup is known good
