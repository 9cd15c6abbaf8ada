"""Story: managed key pairs (issue 16 §4). The server makes an RSA and an EC pair; a granted agent
fetches the private key (openssl reads the PEM, 0600), prints the public key, signs and verifies
(openssl checks the signatures too); a rotation leaves old signatures verifiable, a compromise
or a destroy does not; AES-only and pair-only commands refuse the other kind in one line; a
disabled pair gives neither its private key, nor a signature, nor its public key."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.rig import Rig
from tests.harness import ServerProcess, agent, assert_one_line_error, exe

pytestmark = pytest.mark.sqlite_only(
    "signing, publishing and refusals are the agent's and the server's; the store's key-pair"
    " records run on both backends in tests/unit/server/test_key_pairs.py"
)

RIG = Rig(
    "kmspair",
    agents=(("web-1", ("web",)), ("db-1", ("db",))),
    keys=(("app", "group:web"),),
)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, check=False)


def _openssl_verifies(root: Path, name: str, public_pem: str, sig_file: Path, data: Path) -> bool:
    """openssl dgst -sha256 -verify with the public key, over the raw signature in the JSON file."""
    pub, raw = root / f"{name}.pub.pem", root / f"{name}.sig.bin"
    pub.write_text(public_pem)
    raw.write_bytes(base64.b64decode(json.loads(sig_file.read_text())["signature"]))
    pss = (
        ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"] if name.startswith("rsa") else []
    )
    done = _openssl("dgst", "-sha256", "-verify", str(pub), *pss, "-signature", str(raw), str(data))
    return done.returncode == 0 and "Verified OK" in done.stdout


def test_key_pairs_are_fetched_published_and_sign_across_rotations(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    web = root / "web-1"
    for name, key_type in (("rsa-signer", "rsa-2048"), ("ec-signer", "ec-p256")):
        server.admin("key", "create", name, "--type", key_type, "--grant", "group:web")
    listed = {k["name"]: k for k in json.loads(server.admin("key", "list", "--json").stdout)}
    assert [listed[n]["type"] for n in ("app", "ec-signer", "rsa-signer")] == [
        "aes-256",
        "ec-p256",
        "rsa-2048",
    ]
    assert "rsa-2048" in server.admin("key", "list").stdout

    data = root / "release.tar"
    data.write_bytes(b"release 1.0\n" * 1000)
    for name, key_type in (("rsa-signer", "rsa-2048"), ("ec-signer", "ec-p256")):
        pem = root / f"{name}.pem"
        done = agent(web, "fetch-key", name, "--out", str(pem))
        assert done.returncode == 0, done.stderr
        assert pem.stat().st_mode & 0o777 == 0o600 and pem.read_text().startswith(
            "-----BEGIN " + "PRIVATE KEY-----"  # split: no tracked file holds a PEM key header
        )
        assert _openssl("pkey", "-in", str(pem), "-noout").returncode == 0
        public = agent(web, "public-key", name)
        assert public.returncode == 0 and public.stdout == _openssl("pkey", "-in", str(pem), "-pubout").stdout
        sig = root / f"{name}.v1.sig"
        assert agent(web, "sign", "--key", name, str(data), "--out", str(sig)).returncode == 0
        assert (json.loads(sig.read_text())["key"], json.loads(sig.read_text())["version"]) == (name, 1)
        assert _openssl_verifies(root, name, public.stdout, sig, data)
        good = agent(web, "verify", "--key", name, str(data), str(sig))
        assert good.stdout.strip() == f"good signature by key {name} version 1 (active)", good.stderr

    # After a rotation the new version signs and the old signature still verifies; kms-agent run
    # moves the PEM file fetched without --version to the new pair (it replays the log from where
    # the agent's watch position stands, so it needs no head start).
    pem = root / "rsa-signer.pem"
    daemon = subprocess.Popen(
        [exe("kms-agent"), "run", "--no-listen", "--dir", str(web)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        server.admin("key", "rotate", "rsa-signer")
        v2 = agent(web, "public-key", "rsa-signer").stdout
        deadline = time.monotonic() + 20
        while _openssl("pkey", "-in", str(pem), "-pubout").stdout != v2:
            assert daemon.poll() is None and time.monotonic() < deadline, "the PEM file was not moved to v2"
            time.sleep(0.2)
        assert pem.stat().st_mode & 0o777 == 0o600
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0, daemon.stderr.read() if daemon.stderr else ""
    sig1, sig2 = root / "rsa-signer.v1.sig", root / "rsa-signer.v2.sig"
    assert agent(web, "sign", "--key", "rsa-signer", str(data), "--out", str(sig2)).returncode == 0
    assert json.loads(sig2.read_text())["version"] == 2
    old = agent(web, "verify", "--key", "rsa-signer", str(data), str(sig1))
    assert old.stdout.strip() == "good signature by key rsa-signer version 1 (deactivated)", old.stderr
    assert (
        agent(web, "public-key", "rsa-signer", "--version", "1").stdout
        != agent(web, "public-key", "rsa-signer").stdout
    )
    # A changed file, or another key's name, does not verify.
    data2 = root / "other.tar"
    data2.write_bytes(b"release 1.1\n")
    assert_one_line_error(
        agent(web, "verify", "--key", "rsa-signer", str(data2), str(sig2)), 10, "different contents"
    )
    assert_one_line_error(
        agent(web, "verify", "--key", "ec-signer", str(data), str(sig2)),
        2,
        "by key rsa-signer, not ec-signer",
    )
    # A compromised version's signatures are refused; the current one's are not.
    server.admin("revoke", "key", "--yes", "rsa-signer", "--version", "1", "--reason", "keyCompromise")
    assert_one_line_error(
        agent(web, "verify", "--key", "rsa-signer", str(data), str(sig1)),
        6,
        "version 1 of key rsa-signer is compromised",
    )
    assert agent(web, "verify", "--key", "rsa-signer", str(data), str(sig2)).returncode == 0
    compromised = agent(web, "public-key", "rsa-signer", "--version", "1")
    assert compromised.returncode == 0 and "is compromised" in compromised.stderr
    # A destroyed version's signatures are refused too, in one line naming the version; the
    # version after it still signs and verifies.
    server.admin("key", "rotate", "ec-signer")
    ec1, ec2 = root / "ec-signer.v1.sig", root / "ec-signer.v2.sig"
    assert agent(web, "verify", "--key", "ec-signer", str(data), str(ec1)).returncode == 0
    server.admin("key", "destroy", "--yes", "ec-signer", "--version", "1")
    assert_one_line_error(
        agent(web, "verify", "--key", "ec-signer", str(data), str(ec1)),
        6,
        "version 1 of key 'ec-signer' was destroyed",
    )
    assert_one_line_error(
        agent(web, "public-key", "ec-signer", "--version", "1"),
        6,
        "version 1 of key 'ec-signer' was destroyed",
    )
    assert agent(web, "sign", "--key", "ec-signer", str(data), "--out", str(ec2)).returncode == 0
    assert json.loads(ec2.read_text())["version"] == 2
    assert agent(web, "verify", "--key", "ec-signer", str(data), str(ec2)).returncode == 0


def test_each_kind_refuses_the_others_commands_and_a_disabled_pair_gives_nothing(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    web, db = root / "web-1", root / "db-1"
    server.admin("key", "create", "pair", "--type", "ec-p256", "--grant", "group:web")
    plain = root / "plain.txt"
    plain.write_text("secret\n")
    for args in (
        ("encrypt", "--key", "pair", str(plain), str(root / "x.kms")),
        ("fetch-key", "pair", "--format", "raw"),
    ):
        assert_one_line_error(
            agent(web, *args), 6, "key pair is an ec-p256 key pair, not an AES key", "sign/verify --key pair"
        )
    for args in (("sign", "--key", "app", str(plain)), ("public-key", "app")):
        assert_one_line_error(
            agent(web, *args), 6, "key app is an aes-256 key, not a key pair", "encrypt/decrypt"
        )
    assert not (root / "plain.txt.sig").exists()
    # Only a grant gives the public key, and the grant alone: db-1 learns nothing of the key.
    assert_one_line_error(agent(db, "public-key", "pair"), 4, "not granted key 'pair'")
    # AES keys behave as before: fetch-key still writes raw bytes.
    out = root / "app.key"
    assert agent(web, "fetch-key", "app", "--out", str(out)).returncode == 0 and len(out.read_bytes()) == 32
    # Each refusal released nothing: of these two keys, the trail holds the AES release only,
    # and each refusal as one (the public key of an AES key as a refused read).
    trail = json.loads(server.admin("audit", "list", "--json").stdout)
    releases = [r["object"] for r in trail if r["action"] == "key.release" and r["outcome"] == "ok"]
    assert "key:app/v1" in releases and not [r for r in releases if r.startswith("key:pair")], releases
    refused = [(r["action"], r["object"], r["outcome"]) for r in trail if r["outcome"] != "ok"]
    assert refused.count(("key.release", "key:pair", "wrong-type")) == 2, refused
    assert ("key.public", "key:app", "wrong-type") in refused and (
        "key.public",
        "key:pair",
        "denied",
    ) in refused

    # A disabled pair gives nothing: not the private key, not a signature, not even the public key
    # (GetPublicKey checks the key is enabled, as a release does), so verify is refused too.
    sig = root / "plain.txt.sig"
    assert agent(web, "sign", "--key", "pair", str(plain), "--out", str(sig)).returncode == 0
    server.admin("key", "disable", "pair", "--reason", "pipeline under review")
    pem, late = root / "pair.pem", root / "late.sig"
    for args in (
        ("fetch-key", "pair", "--out", str(pem)),
        ("sign", "--key", "pair", str(plain), "--out", str(late)),
        ("public-key", "pair"),
        ("verify", "--key", "pair", str(plain), str(sig)),
    ):
        assert_one_line_error(
            agent(web, *args), 6, "key pair is disabled (pipeline under review)", "kms-server key enable pair"
        )
    assert not pem.exists() and not late.exists()
    # An agent not granted the pair learns nothing of its state.
    assert_one_line_error(agent(db, "public-key", "pair"), 4, "not granted key 'pair'")
    server.admin("key", "enable", "pair")
    assert agent(web, "verify", "--key", "pair", str(plain), str(sig)).returncode == 0
    assert agent(web, "fetch-key", "pair", "--out", str(pem)).returncode == 0 and pem.exists()
