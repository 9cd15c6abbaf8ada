"""Story: keys granted to a group, fetched and used by insiders, refused to an outsider,
rotated, destroyed; plus the bad input around keys and envelopes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kms.v1 import keys_pb2, keys_pb2_grpc
from tests.harness import (
    ServerProcess,
    agent,
    agent_credentials,
    assert_one_line_error,
    enroll,
    short_tmpdir,
    snapshot,
    store_bytes,
)


@pytest.fixture(scope="module")
def fleet(server: ServerProcess) -> Iterator[dict[str, Path]]:
    """Two agents in group web, one outside it, and a key granted to web."""
    root = short_tmpdir("kmsfl")
    dirs = {"web-1": root / "web-1", "web-2": root / "web-2", "db-1": root / "db-1"}
    for name, state in dirs.items():
        groups = ("web",) if name.startswith("web") else ("db",)
        result = enroll(server, state, server.token(name, *groups))
        assert result.returncode == 0, result.stderr
    created = server.admin("key", "create", "app", "--grant", "group:web", "--json")
    assert json.loads(created.stdout)["versions"][0]["state"] == "active"
    dirs["root"] = root
    yield dirs
    shutil.rmtree(root, ignore_errors=True)


def _fetch(state: Path, *args: str) -> bytes:
    result = agent(state, "fetch-key", "app", "--format", "hex", *args)
    assert result.returncode == 0, result.stderr
    return bytes.fromhex(result.stdout.strip())


def test_insiders_share_the_key_and_each_others_data(server: ServerProcess, fleet: dict[str, Path]) -> None:
    a, b, root = fleet["web-1"], fleet["web-2"], fleet["root"]
    key_a, key_b = _fetch(a), _fetch(b)
    assert key_a == key_b and len(key_a) == 32

    # --out writes the raw key 0600; --json shows metadata but not the key unless asked.
    out = root / "app.key"
    assert agent(a, "fetch-key", "app", "--out", str(out)).returncode == 0
    assert out.read_bytes() == key_a and stat.S_IMODE(out.stat().st_mode) == 0o600
    meta = json.loads(agent(a, "fetch-key", "app", "--json").stdout)
    assert meta["version"] == 1 and meta["state"] == "active" and "key_base64" not in meta
    with_key = json.loads(agent(a, "fetch-key", "app", "--json", "--include-key").stdout)
    assert base64.b64decode(with_key["key_base64"]) == key_a

    plain = root / "plain.bin"
    plain.write_bytes(os.urandom(300_000))
    assert agent(a, "encrypt", "--key", "app", str(plain), str(root / "enc.bin")).returncode == 0
    assert agent(b, "decrypt", str(root / "enc.bin"), str(root / "dec.bin")).returncode == 0
    assert (root / "dec.bin").read_bytes() == plain.read_bytes()

    # No key material anywhere on the server side but sealed: not in the store, not in the log.
    assert key_a not in store_bytes(server)
    assert key_a.hex() not in server.output() and base64.b64encode(key_a).decode() not in server.output()
    # Every release is recorded: who, which key and version, when.
    releases = snapshot(server)["key_releases"]
    assert {(r[1], r[2], r[3]) for r in releases} >= {("app", 1, "web-1"), ("app", 1, "web-2")}


def test_outsider_is_denied_and_learns_nothing(server: ServerProcess, fleet: dict[str, Path]) -> None:
    denied = agent(fleet["db-1"], "fetch-key", "app")
    missing = agent(fleet["db-1"], "fetch-key", "no-such-key")
    assert_one_line_error(denied, 4, "not granted key 'app'")
    assert_one_line_error(missing, 4, "not granted key 'no-such-key'")
    assert denied.stderr.replace("app", "K") == missing.stderr.replace("no-such-key", "K")


def test_rotate_then_destroy(server: ServerProcess, fleet: dict[str, Path]) -> None:
    a, b, root = fleet["web-1"], fleet["web-2"], fleet["root"]
    v1 = _fetch(a)
    (root / "old.txt").write_bytes(b"written under version 1")
    assert agent(a, "encrypt", "--key", "app", str(root / "old.txt"), str(root / "old.enc")).returncode == 0

    rotated = json.loads(server.admin("key", "rotate", "app", "--json").stdout)
    assert rotated["current_version"] == 2
    assert [v["state"] for v in rotated["versions"]] == ["deactivated", "active"]
    assert _fetch(a) != v1 and _fetch(a, "--purpose", "decrypt", "--version", "1") == v1
    # For encryption a rotated-out version is refused (KMIP Deactivated: it decrypts only).
    assert_one_line_error(agent(a, "fetch-key", "app", "--version", "1"), 6, "it decrypts only")

    # Old data still decrypts (the header names version 1); new data uses version 2.
    assert agent(b, "decrypt", str(root / "old.enc"), str(root / "old.dec")).returncode == 0
    assert (root / "old.dec").read_bytes() == b"written under version 1"

    # The current version cannot be destroyed; an old one can, for good.
    assert_one_line_error(
        server.admin("key", "destroy", "--yes", "app", "--version", "2", check=False), 6, "rotate"
    )
    before = snapshot(server)["key_versions"]
    sealed_v1 = next(r[3] for r in before if r[1] == 1)
    destroyed = json.loads(server.admin("key", "destroy", "--yes", "app", "--version", "1", "--json").stdout)
    assert destroyed["versions"][0]["state"] == "destroyed"
    assert sealed_v1 not in store_bytes(server)
    assert_one_line_error(agent(a, "fetch-key", "app", "--version", "1"), 6, "was destroyed")
    result = agent(b, "decrypt", str(root / "old.enc"), str(root / "gone.dec"))
    assert_one_line_error(result, 6, "was destroyed")
    assert not (root / "gone.dec").exists()
    listed = json.loads(server.admin("key", "list", "--json").stdout)
    assert "material" not in json.dumps(listed) and listed[0]["versions"][0]["state"] == "destroyed"


# --- bad input -----------------------------------------------------------------


@pytest.mark.sqlite_only("the envelope format is the agent's own: the store plays no part")
def test_envelope_damage_is_one_opaque_error_and_no_output(fleet: dict[str, Path]) -> None:
    a, root = fleet["web-1"], fleet["root"]
    (root / "p").write_bytes(os.urandom(200_000))  # four chunks
    assert agent(a, "encrypt", "--key", "app", str(root / "p"), str(root / "e")).returncode == 0
    good = (root / "e").read_bytes()
    header_len = 2 + len("app") + 8 + 32 + 7
    cases = {
        "truncated-in-header": good[:10],
        "truncated-at-chunk-boundary": good[: header_len + 65552],
        "truncated-mid-chunk": good[:-100],
        "flipped-in-salt": good[:20] + bytes([good[20] ^ 1]) + good[21:],
        "flipped-in-version": good[:6] + bytes([good[6] ^ 1]) + good[7:],
        "version-high-bit": good[:5] + bytes([good[5] ^ 0x80]) + good[6:],
        "name-made-invalid": good[:2] + b"\x00" + good[3:],
        "flipped-in-ciphertext": good[:-50] + bytes([good[-50] ^ 1]) + good[-49:],
        "appended": good + b"\x00" * 16,
        "not-an-envelope": b"hello world" * 10,
        "empty": b"",
    }
    messages = set()
    for name, data in cases.items():
        (root / "bad").write_bytes(data)
        out = root / f"out-{name}"
        result = agent(a, "decrypt", str(root / "bad"), str(out))
        assert_one_line_error(result, 10, "damaged, truncated")
        assert not out.exists(), name
        messages.add(result.stderr)
    assert len(messages) == 1 and "damaged, truncated" in messages.pop()
    assert list(root.glob(".out-*")) == []  # no temporary files left behind either
    # A missing output directory is a clear one-line error, not a crash.
    assert_one_line_error(
        agent(a, "decrypt", str(root / "e"), str(root / "no" / "such" / "dir")), 2, "does not exist"
    )


def test_envelope_naming_a_key_the_agent_may_not_fetch(server: ServerProcess, fleet: dict[str, Path]) -> None:
    root = fleet["root"]
    server.admin("key", "create", "db-secrets", "--grant", "agent:db-1")
    (root / "s").write_bytes(b"db only")
    assert (
        agent(
            fleet["db-1"], "encrypt", "--key", "db-secrets", str(root / "s"), str(root / "s.enc")
        ).returncode
        == 0
    )
    result = agent(fleet["web-1"], "decrypt", str(root / "s.enc"), str(root / "s.dec"))
    assert_one_line_error(result, 4, "not granted key 'db-secrets'")
    assert not (root / "s.dec").exists()


@pytest.mark.parametrize(
    "args, code, needle",
    [
        pytest.param(["fetch-key", "bad name!"], 2, "key name", id="bad-name"),
        pytest.param(["fetch-key", ""], 2, "key name", id="empty-name"),
        pytest.param(["fetch-key", "x" * 129], 2, "key name", id="too-long-name"),
        pytest.param(["fetch-key", "app", "--version", "-1"], 2, "positive", id="negative-version"),
        pytest.param(["fetch-key", "app", "--version", "99"], 5, "no version 99", id="absent-version"),
        pytest.param(
            ["encrypt", "--key", "app", "/nonexistent", "/tmp/seed-kms-test-never-written"],
            2,
            "cannot read",
            id="missing-input",
        ),
    ],
)
def test_agent_key_bad_input(fleet: dict[str, Path], args: list[str], code: int, needle: str) -> None:
    assert_one_line_error(agent(fleet["web-1"], *args), code, needle)


def test_fetchkey_rpc_bounds(server: ServerProcess, fleet: dict[str, Path]) -> None:
    """Raw gRPC with web-1's certificate: version out of range is INVALID_ARGUMENT."""
    state = fleet["web-1"]
    creds = agent_credentials(state)
    with grpc.secure_channel(server.address, creds) as ch:
        stub = keys_pb2_grpc.KeysStub(ch)
        assert stub.FetchKey(keys_pb2.FetchKeyRequest(name="app", version=0), timeout=10).version >= 1
        for version in (-1, 2**31, 2**62):
            before = snapshot(server)
            with pytest.raises(grpc.RpcError) as info:
                stub.FetchKey(keys_pb2.FetchKeyRequest(name="app", version=version), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert snapshot(server) == before


@pytest.mark.parametrize(
    "args, code, needle",
    [
        pytest.param(["key", "create", "bad/name"], 2, "key name", id="bad-name"),
        pytest.param(["key", "create", "app"], 9, "already exists", id="duplicate"),
        pytest.param(
            ["key", "create", "k2", "--grant", "team:web"], 2, "agent:NAME or group:NAME", id="bad-grant"
        ),
        pytest.param(["key", "rotate", "nope"], 5, "no key named", id="rotate-unknown"),
        pytest.param(["key", "ungrant", "app", "agent:nobody"], 5, "has no grant", id="ungrant-absent"),
        pytest.param(["key", "destroy", "--yes", "app", "--version", "0"], 2, "positive", id="destroy-zero"),
        pytest.param(
            ["key", "destroy", "--yes", "app", "--version", "77"], 5, "no version 77", id="destroy-absent"
        ),
    ],
)
def test_admin_key_bad_input_changes_nothing(
    server: ServerProcess, fleet: dict[str, Path], args: list[str], code: int, needle: str
) -> None:
    before = snapshot(server)
    assert_one_line_error(server.admin(*args, check=False), code, needle)
    assert snapshot(server) == before


def test_grant_and_ungrant_take_effect(server: ServerProcess, fleet: dict[str, Path]) -> None:
    db = fleet["db-1"]
    server.admin("key", "grant", "app", "agent:db-1")
    assert agent(db, "fetch-key", "app").returncode == 0
    server.admin("key", "ungrant", "app", "agent:db-1")
    assert_one_line_error(agent(db, "fetch-key", "app"), 4, "not granted")


@pytest.mark.sqlite_only("streaming encryption is the agent's own: the store plays no part")
def test_one_gib_file_round_trips_in_bounded_memory(fleet: dict[str, Path]) -> None:
    import hashlib
    import resource

    a, b = fleet["web-1"], fleet["web-2"]
    work = short_tmpdir("kmsbig")
    try:
        block = os.urandom(1 << 20)
        digest = hashlib.sha256()
        with (work / "plain").open("wb") as f:
            for i in range(1024):
                piece = block[i:] + block[:i]  # no two MiB alike
                f.write(piece)
                digest.update(piece)
        assert agent(a, "encrypt", "--key", "app", str(work / "plain"), str(work / "enc")).returncode == 0
        (work / "plain").unlink()
        assert agent(b, "decrypt", str(work / "enc"), str(work / "dec")).returncode == 0
        check = hashlib.sha256()
        with (work / "dec").open("rb") as f:
            while chunk := f.read(1 << 20):
                check.update(chunk)
        assert check.hexdigest() == digest.hexdigest()
        # Streaming: the agents never held the file (ru_maxrss is KiB on Linux).
        assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 256 * 1024
    finally:
        shutil.rmtree(work, ignore_errors=True)
