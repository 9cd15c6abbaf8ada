"""Starting on data directories the server cannot use: one line naming the problem, exit non-zero."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import ServerProcess, assert_one_line_error, database_args, exe, run


@pytest.fixture(scope="module")
def initialised(backend: str) -> Path:
    """A data dir made by one real start and stop; each case corrupts a copy."""
    from tests.harness import short_tmpdir

    root = short_tmpdir("kmsdd")
    server = ServerProcess(root / "d").start()
    server.token("someone")
    assert server.stop() == 0
    return root / "d"


def _start(data: Path, *extra: str, store_of: Path | None = None) -> subprocess.CompletedProcess[str]:
    """kms-server run on data; on PostgreSQL with the database of store_of (default: data's own)."""
    return run(
        [
            exe("kms-server"),
            "run",
            "--data-dir",
            str(data),
            "--listen",
            "127.0.0.1:0",
            "--enroll-listen",
            "127.0.0.1:0",
            *database_args(store_of or data),
            *extra,
        ],
        timeout=30,
    )


def _corrupt_store(d: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{d / 'kms.db'}{suffix}").unlink(missing_ok=True)
    (d / "kms.db").write_bytes(b"this is not a database" * 100)


def _wrong_master_key(d: Path) -> None:
    (d / "master.key").write_bytes(os.urandom(32))


def _short_master_key(d: Path) -> None:
    (d / "master.key").write_bytes(b"short")


def _master_key_readable(d: Path) -> None:
    os.chmod(d / "master.key", 0o644)


def _unreadable_ca_cert(d: Path) -> None:
    # Tests run as root, so chmod 000 would not stop a read: make it a directory.
    (d / "ca.crt").unlink()
    (d / "ca.crt").mkdir()


def _missing_ca_key(d: Path) -> None:
    (d / "ca.key").unlink()


def _tampered_ca_key(d: Path) -> None:
    blob = bytearray((d / "ca.key").read_bytes())
    blob[20] ^= 0xFF
    (d / "ca.key").write_bytes(bytes(blob))


def _lost_master_key(d: Path) -> None:
    (d / "master.key").unlink()


# On PostgreSQL the store and the CA (certificate and sealed key) live in the database,
# not in the data dir: damaging those files tests nothing there.
_EMBEDDED_STORE = pytest.mark.sqlite_only("kms.db is the embedded SQLite store; PostgreSQL keeps none")
_EMBEDDED_CA = pytest.mark.sqlite_only(
    "on PostgreSQL the CA and its key live in the database (ca.crt in the data dir is a copy it rewrites)"
)


@pytest.mark.parametrize(
    "damage, needles",
    [
        pytest.param(
            _corrupt_store,
            ["kms.db", "corrupt or not a Seed KMS database"],
            id="corrupt-store",
            marks=_EMBEDDED_STORE,
        ),
        pytest.param(
            _wrong_master_key,
            {
                "sqlite": ["ca.key", "wrong master key"],
                "postgresql": ["CA key in the database", "wrong master key"],
            },
            id="wrong-master-key",
        ),
        pytest.param(_short_master_key, ["master.key", "exactly 32 bytes"], id="short-master-key"),
        pytest.param(_master_key_readable, ["master.key", "readable by others"], id="master-key-0644"),
        pytest.param(
            _unreadable_ca_cert, ["cannot read", "ca.crt"], id="unreadable-ca-cert", marks=_EMBEDDED_CA
        ),
        pytest.param(
            _missing_ca_key, ["incomplete", "ca.key is missing"], id="missing-ca-key", marks=_EMBEDDED_CA
        ),
        pytest.param(
            _tampered_ca_key, ["ca.key", "does not decrypt"], id="tampered-ca-key", marks=_EMBEDDED_CA
        ),
        pytest.param(
            _lost_master_key,
            {"sqlite": ["no master.key"], "postgresql": ["master.key does not", "--master-key-file"]},
            id="lost-master-key",
        ),
    ],
)
def test_unusable_data_dir_stops_with_one_line(
    initialised: Path, damage: Callable[[Path], None], needles: list[str] | dict[str, list[str]], backend: str
) -> None:
    if isinstance(needles, dict):  # the message names where the CA lives: files or the database
        needles = needles[backend]
    copy = initialised.parent / f"c{os.getpid()}{abs(hash(damage.__name__)) % 10000}"
    shutil.copytree(initialised, copy)
    try:
        damage(copy)
        result = _start(copy, store_of=initialised)  # a copy of the data dir, the same database
        assert_one_line_error(result, 6, *needles)
        assert result.stdout == ""  # never claimed to be ready
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def test_second_server_on_same_dir_is_refused(tmpdir_short: Path) -> None:
    server = ServerProcess(tmpdir_short / "d").start()
    try:
        assert_one_line_error(_start(tmpdir_short / "d"), 6, "already running")
    finally:
        assert server.stop() == 0


def test_contradicting_flags_on_existing_dir(initialised: Path) -> None:
    assert_one_line_error(
        _start(initialised, "--trust-domain", "other.example"), 6, "trust domain", "cannot change"
    )
    assert_one_line_error(_start(initialised, "--ca-key-type", "rsa-3072"), 6, "ecdsa-p256", "cannot change")


@pytest.mark.parametrize(
    "args, needle",
    [
        pytest.param(["--listen", "nonsense"], "--listen", id="bad-listen"),
        pytest.param(["--cert-ttl", "forever"], "--cert-ttl", id="bad-ttl"),
        pytest.param(["--trust-domain", "Not Valid"], "trust domain", id="bad-trust-domain"),
        pytest.param(["--ca-key-type", "dsa"], "invalid choice", id="bad-key-type"),
    ],
)
def test_bad_flags_stop_startup_naming_the_setting(tmpdir_short: Path, args: list[str], needle: str) -> None:
    assert_one_line_error(_start(tmpdir_short / "d", *args), 2, needle)
    assert not (tmpdir_short / "d").exists()


def test_contradiction_in_environment_names_the_key(tmpdir_short: Path) -> None:
    result = run(
        [exe("kms-server"), "run", "--data-dir", str(tmpdir_short / "d")],
        env={"KMS_CA_TTL": "12h"},
    )
    assert_one_line_error(result, 2, "--cert-ttl", "--ca-ttl")


def test_port_in_use_is_one_line(tmpdir_short: Path) -> None:
    """Issue 17: the ports are checked before anything is created, so no CA is made in a fresh data
    dir and gRPC's C core never logs its own add_port line before ours."""
    server = ServerProcess(tmpdir_short / "a").start()
    try:
        for flag, taken in (("--listen", server.address), ("--enroll-listen", server.enroll_address)):
            ports = {"--listen": "127.0.0.1:0", "--enroll-listen": "127.0.0.1:0", flag: taken}
            fresh = tmpdir_short / f"b{flag}"
            result = run(
                [
                    exe("kms-server"),
                    "run",
                    "--data-dir",
                    str(fresh),
                    *[part for item in ports.items() for part in item],
                    *database_args(fresh),
                ],
            )
            assert_one_line_error(result, 6, f"cannot listen on {taken} ({flag})", "already in use")
            assert "add_port" not in result.stderr
            assert not fresh.exists(), sorted(p.name for p in fresh.iterdir())
    finally:
        assert server.stop() == 0
    # An address of no interface here: the same one line, and nothing created.
    fresh = tmpdir_short / "c"
    result = run(
        [
            exe("kms-server"),
            "run",
            "--data-dir",
            str(fresh),
            "--listen",
            "192.0.2.1:9999",
            *database_args(fresh),
        ]
    )
    assert_one_line_error(
        result, 6, "cannot listen on 192.0.2.1:9999 (--listen)", "give an address of this machine"
    )
    assert "add_port" not in result.stderr and not fresh.exists()
