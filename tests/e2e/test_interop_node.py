"""Story: a client in another language, written from docs/protocol.md alone (interop/node/), against a
real kms-server and real kms-agents: the test vectors, X25519 exchanges with the server and with a
listening agent, a `kms-agent encrypt` file decrypted, a `kms-agent sign` signature verified.

Node and its two npm packages are needed: without node the module is skipped, saying so; without
interop/node/node_modules it runs `npm ci` there first, and skips only when npm cannot reach the
registry (any other npm failure fails the test).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.rig import Rig
from tests.harness import ServerProcess, agent, exe

pytestmark = pytest.mark.sqlite_only("the Node client speaks to the API: the store plays no part")

RIG = Rig("kmsnode", agents=(("a", ()), ("b", ())), keys=(("app", "agent:a"),))
ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "interop" / "node"
# npm's words for a registry it cannot reach (no network, no DNS, a proxy that refuses).
_OFFLINE = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|network|proxy", re.I
)


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    """The node binary, with interop/node's dependencies installed (npm ci when missing)."""
    binary = shutil.which("node")
    if binary is None:
        pytest.skip(
            "node is not installed (.ci/run installs it with apt-get): the Node interop client cannot run"
        )
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot install interop/node's dependencies")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0 and _OFFLINE.search(done.stderr):
            pytest.skip(
                f"npm cannot reach the registry to install interop/node's dependencies: {done.stderr[-300:]}"
            )
        assert done.returncode == 0, f"npm ci failed in {NODE_DIR}:\n{done.stderr}"
    yield binary


def _node(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, str(NODE_DIR / "main.js"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("KMS_")},
    )


def test_the_vectors_check_in_node(node: str) -> None:
    result = _node(node, "vectors", str(ROOT / "tests" / "vectors"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "wrap": 2,
        "envelope": 3,
        "key_schedule": 3,
        "transcript": 2,
        "join_token": 8,
        "signature": 2,
    }


def test_node_exchanges_a_key_with_the_server(node: str, rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    result = _node(node, "exchange", "--dir", str(root / "a"), "--peer", "server")
    assert result.returncode == 0, result.stderr + server.output()
    out = json.loads(result.stdout)
    # Key confirmation passed in Node: the server derived the same key from the same transcript.
    assert out["peer"] == "server" and re.fullmatch(r"[0-9a-f]{32}", out["session_id"])
    assert len(bytes.fromhex(out["session_id"])) == 16 and out["key_base64"] not in server.output()


def test_node_exchanges_a_key_with_a_listening_agent(
    node: str, rig: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    server, root = rig
    listener = subprocess.Popen(
        [
            exe("kms-agent"),
            "listen",
            "--once",
            "--json",
            "--dir",
            str(root / "b"),
            "--out-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # the listener is another process: retry while the server says it is not listening yet
            result = _node(node, "exchange", "--dir", str(root / "a"), "--peer", "b")
            if "is not listening" not in result.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert result.returncode == 0, result.stderr
        heard, err = listener.communicate(timeout=20)
    finally:
        listener.kill()
        listener.wait(10)
    assert listener.returncode == 0, err
    mine, theirs = json.loads(result.stdout), json.loads(heard)
    assert (mine["peer"], theirs["peer"]) == ("b", "a") and mine["session_id"] == theirs["session_id"]
    assert Path(theirs["file"]).read_bytes() == base64.b64decode(mine["key_base64"])


def test_node_decrypts_what_kms_agent_encrypted(
    node: str, rig: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    _, root = rig
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(150_000))  # three chunks: 64 KiB, 64 KiB and the rest
    done = agent(root / "a", "encrypt", "--key", "app", str(plain), str(tmp_path / "enc"))
    assert done.returncode == 0, done.stderr
    result = _node(node, "decrypt", "--dir", str(root / "a"), str(tmp_path / "enc"), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == "app"
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()
    # b is not granted the key: the server says so, and Node reports it as one line.
    refused = _node(node, "decrypt", "--dir", str(root / "b"), str(tmp_path / "enc"), str(tmp_path / "out-b"))
    assert refused.returncode == 1 and "gRPC 7" in refused.stderr, refused.stderr  # PERMISSION_DENIED


def test_node_verifies_what_kms_agent_signed(
    node: str, rig: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    _, root = rig
    doc = tmp_path / "release.txt"
    doc.write_text("release 1.0\n")
    signed = agent(root / "a", "sign", str(doc), "--out", str(tmp_path / "release.sig"))
    assert signed.returncode == 0, signed.stderr
    result = _node(node, "verify", "--dir", str(root / "b"), str(doc), str(tmp_path / "release.sig"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["signer"] == "a"
    doc.write_text("release 1.1\n")
    changed = _node(node, "verify", "--dir", str(root / "b"), str(doc), str(tmp_path / "release.sig"))
    assert changed.returncode == 1 and "different contents" in changed.stderr


def test_node_verifies_what_a_key_pair_signed(
    node: str, rig: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    server, root = rig
    server.admin("key", "create", "signer", "--type", "ec-p256", "--grant", "agent:a")
    doc = tmp_path / "release.txt"
    doc.write_text("release 2.0\n")
    signed = agent(root / "a", "sign", "--key", "signer", str(doc), "--out", str(tmp_path / "release.sig"))
    assert signed.returncode == 0, signed.stderr
    # Node fetches the version's public key (Keys/GetPublicKey) and checks the signature with it.
    result = _node(node, "verify", "--dir", str(root / "a"), str(doc), str(tmp_path / "release.sig"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"valid": True, "key": "signer", "version": 1, "state": "active"}
