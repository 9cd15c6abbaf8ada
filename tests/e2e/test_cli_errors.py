"""Errors a new user hit (issue 17 §5), each one line with the right exit code, from the real CLIs.

No store plays a part in these: they run on SQLite only.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from agent.state import AgentIdentity, AgentSettings, StateDir
from kms import profile
from tests.e2e.rig import Rig
from tests.harness import agent, assert_one_line_error, exe, run

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


def _expired_agent(state: Path, key: rsa.RSAPrivateKey) -> None:
    """A state dir as enrollment leaves it, whose certificate expired an hour ago (its server is gone:
    the agent must not need one to tell)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = profile.ca_builder(
        ca_key.public_key(), "seed-kms.local", 1 << 70, now - timedelta(days=2), timedelta(days=3)
    )
    ca_cert = ca.sign(ca_key, hashes.SHA256())
    start = now - timedelta(days=1)
    cert = profile.agent_builder(
        key.public_key(), ca_cert, "seed-kms.local", "web-1", 1 << 71, start, timedelta(hours=23)
    ).sign(ca_key, hashes.SHA256())
    settings = AgentSettings(
        "web-1",
        [],
        "spiffe://seed-kms.local/agent/web-1",
        ("127.0.0.1:1",),
        ("127.0.0.1:2",),
        "sha256:" + "ab" * 32,
    )
    StateDir(state).save(AgentIdentity(settings, key, cert, ca_cert.public_bytes(Encoding.PEM)))


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["fetch-key", "app"],
        ["watch"],
        ["renew"],
        ["check", "--serial", "1f"],
        ["sign", "/etc/hostname"],
        ["run", "--no-listen"],
    ],
    ids=lambda c: c[0],
)
def test_expired_agent_certificate_says_so_and_what_to_do(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, command: list[str]
) -> None:
    _expired_agent(tmp_path / "a", rsa_key)
    result = agent(tmp_path / "a", *command)
    assert_one_line_error(
        result,
        3,
        "certificate",
        "expired at",
        "kms-server token create --name web-1",
        "kms-agent enroll --force",
    )
    assert "cannot reach" not in result.stderr


RIG = Rig("e17", agents=(("web", ()), ("gone", ())))


def _into_closed_pipe(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """cmd with its stdout a pipe nobody reads any more, as `cmd | head -1` once head has exited."""
    read, write = os.pipe()
    os.close(read)
    # Buffered, as in a user's shell: the last write happens when stdout is flushed at exit.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_") and k != "PYTHONUNBUFFERED"}
    try:
        return subprocess.run(
            cmd,
            env=env,
            stdout=write,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)


def test_piping_into_a_reader_that_went_away_exits_quietly(rig: tuple[Any, ...]) -> None:
    server, root = rig[:2]
    server.admin("revoke", "agent", "gone", "--yes")  # something for each listing to print
    data_dir = ["--data-dir", str(server.data_dir)]
    for cmd in (
        [exe("kms-server"), "revocations", "list", *data_dir],
        [exe("kms-server"), "audit", "list", *data_dir],
        [exe("kms-server"), "audit", "list", "--json", *data_dir],
        [exe("kms-agent"), "watch", "--json", "--dir", str(root / "web")],
    ):
        result = _into_closed_pipe(cmd)
        assert (result.returncode, result.stderr) == (141, ""), (cmd, result.returncode, result.stderr)


@pytest.mark.parametrize("program", ["kms-server", "kms-agent"])
def test_version(program: str) -> None:
    result = run([exe(program), "--version"])
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{program} {version('seed-kms')}\n", "")
