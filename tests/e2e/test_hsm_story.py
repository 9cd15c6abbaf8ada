"""Story: the CA key in a PKCS#11 token (SoftHSM2), from kms-server init to CRL and OCSP.

One server per backend, its CA key generated in a throwaway SoftHSM2 token by
`kms-server init`: an agent enrolls, the CRL and an OCSP answer verify with
openssl, and the key is nowhere but in the token. Each way the token can fail
is one line, before anything is written to the data dir; a token that fails
while the server runs is one UNAVAILABLE line, and is logged in to again. The
in-process tests use this module's token: python-pkcs11 loads SoftHSM2 once per
process, with the configuration of that moment (the SQLite module's).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from kms.v1 import admin_pb2
from tests.harness import (
    ServerProcess,
    assert_one_line_error,
    database_for,
    enroll,
    exe,
    openssl_ocsp,
    run,
    short_tmpdir,
    store_bytes,
)
from tests.softhsm import SoftHsm

TOKEN, PIN = "kms-ca", "4821-test"
URI = f"pkcs11:token={TOKEN};object=ca"


@pytest.fixture(scope="module")
def hsm(backend: str) -> Iterator[SoftHsm]:
    root = short_tmpdir("kmshsm")
    hsm = SoftHsm(root)
    try:
        hsm.init_token(TOKEN, PIN)
        yield hsm
    finally:
        hsm.close()
        shutil.rmtree(root, ignore_errors=True)


def _flags(hsm: SoftHsm, uri: str = URI) -> list[str]:
    pin_file = hsm.root / "pin"
    if not pin_file.exists():
        pin_file.write_text(PIN + "\n")
        pin_file.chmod(0o600)
    return ["--ca-key", uri, "--pkcs11-module", str(hsm.module), "--pkcs11-pin-file", str(pin_file)]


@pytest.fixture(scope="module")
def served(hsm: SoftHsm) -> Iterator[tuple[ServerProcess, Path]]:
    root = short_tmpdir("kmshsmd")
    data, url = root / "d", database_for(root / "d")
    db = ["--database", url] if url else []
    made = run([exe("kms-server"), "init", "--data-dir", str(data), *db, *_flags(hsm)])
    assert made.returncode == 0 and made.stdout.startswith("created "), made.stderr
    server = ServerProcess(data, extra_args=[*_flags(hsm), "--http-listen", "127.0.0.1:0"], database=url)
    server.start()
    try:
        yield server, root
    finally:
        assert server.stop() == 0, server.output()
        shutil.rmtree(root, ignore_errors=True)


def test_an_agent_enrolls_and_crl_and_ocsp_verify(served: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, root = served
    for name in ("good", "gone"):
        result = enroll(server, root / name, server.token(name))
        assert result.returncode == 0, result.stderr
    server.admin("revoke", "agent", "--yes", "gone")
    ca, http = server.data_dir / "ca.crt", server.fields["http-address"]
    good, revoked = root / "good" / "agent.crt", root / "gone" / "agent.crt"
    crl_der, crl_pem = tmp_path / "crl.der", tmp_path / "crl.pem"
    assert run(["curl", "-sf", "-o", str(crl_der), f"http://{http}/crl"]).returncode == 0
    assert (
        run(["openssl", "crl", "-inform", "DER", "-in", str(crl_der), "-out", str(crl_pem)]).returncode == 0
    )
    bundle = tmp_path / "ca+crl.pem"
    bundle.write_bytes(ca.read_bytes() + crl_pem.read_bytes())
    ok = run(["openssl", "verify", "-crl_check", "-CAfile", str(bundle), str(good)])
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    bad = run(["openssl", "verify", "-crl_check", "-CAfile", str(bundle), str(revoked)])
    assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr
    # The CRL assembled around the token's signature is clean under an RFC 5280 linter.
    lint = run([exe("lint_crl"), "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(crl_pem)])
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout
    for cert, expected in ((good, ": good"), (revoked, ": revoked")):
        out = openssl_ocsp(ca, cert, http)
        assert "Response verify OK" in out.stdout + out.stderr and expected in out.stdout, (
            out.stdout + out.stderr
        )


def test_the_key_is_in_the_token_only(served: tuple[ServerProcess, Path], hsm: SoftHsm, backend: str) -> None:
    server, _ = served
    assert not (server.data_dir / "ca.key").exists()
    names = {p.name for p in server.data_dir.iterdir()}
    assert names <= {"master.key", "ca.crt", "server.crt", "server.key", "kms.db", "kms.db-wal", "kms.db-shm",
                      "kms.db.writer", "kms.lock", "admin.sock", "audit-keyed-from"}, names  # fmt: skip
    held = store_bytes(server)
    assert b"PRIVATE KEY" not in held
    if backend != "sqlite":
        return  # python-pkcs11 loads SoftHSM2 once per process, with the SQLite module's token directory
    import pkcs11  # the token's own word: the key was made there and can never be read out

    token = pkcs11.lib(str(hsm.module)).get_token(token_label=TOKEN)
    with token.open() as session:  # no login: a private object is not even listed
        assert not list(session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}))


@pytest.mark.sqlite_only("kms-server backup copies the embedded SQLite store; PostgreSQL uses pg_dump")
def test_backup_holds_no_ca_key_and_restores(served: tuple[ServerProcess, Path], hsm: SoftHsm) -> None:
    server, root = served
    backup = root / "backup.tar"
    server.admin("backup", str(backup))
    with tarfile.open(backup) as tar:
        assert sorted(tar.getnames()) == ["ca.crt", "kms.db", "server.crt", "server.key"]
    restored = root / "restored"
    master = server.data_dir / "master.key"
    result = run(
        [exe("kms-server"), "restore", str(backup), "--data-dir", str(restored), "--master-key", str(master)]
    )
    assert result.returncode == 0, result.stderr
    assert not (restored / "ca.key").exists()
    # Without --ca-key, the restored data dir says where its CA key is, and starts nothing.
    alone = run([exe("kms-server"), "init", "--data-dir", str(restored)])
    assert_one_line_error(alone, 6, "CA key is in a PKCS#11 token, give --ca-key")


@pytest.mark.sqlite_only("the token fails before any store is opened")
def test_each_failure_is_one_line_and_creates_nothing(
    served: tuple[ServerProcess, Path], hsm: SoftHsm
) -> None:
    """served: its init made the key object=ca in the token, which the cases below get wrong one by one."""
    fresh = hsm.root / "fresh"
    module = str(hsm.module)
    cases = [
        (["--ca-key", URI, "--pkcs11-module", module], {"KMS_PKCS11_PIN": "0000"}, "wrong PIN for token 'kms-ca'"),
        (["--ca-key", "pkcs11:token=none;object=ca", "--pkcs11-module", module], {}, "no PKCS#11 token labelled 'none'"),
        (["--ca-key", f"pkcs11:token={TOKEN};object=none", "--pkcs11-module", module], {}, "has no private key 'none'"),
        (["--ca-key", URI, "--pkcs11-module", "/etc/hostname"], {}, "cannot load the PKCS#11 module /etc/hostname"),
    ]  # fmt: skip
    for flags, env, says in cases:
        result = run(
            [exe("kms-server"), "run", "--data-dir", str(fresh), "--listen", "127.0.0.1:0", *flags],
            env={"KMS_PKCS11_PIN": PIN, **env},
        )
        assert_one_line_error(result, 6, says)
        assert not fresh.exists(), says
    # A CA key in software stays there: --ca-key cannot move it into a token.
    software = hsm.root / "software"
    assert run([exe("kms-server"), "init", "--data-dir", str(software)]).returncode == 0
    moved = run(
        [exe("kms-server"), "run", "--data-dir", str(software), "--listen", "127.0.0.1:0", *_flags(hsm)]
    )
    assert_one_line_error(moved, 6, "is ca.key, in software: --ca-key cannot move it")


@pytest.mark.sqlite_only("the data dir's checks, before any store is used")
def test_init_makes_a_key_only_for_a_new_ca(served: tuple[ServerProcess, Path], hsm: SoftHsm) -> None:
    """An init that refuses leaves no key in the token, nor a file in the data dir."""
    from server.ca.hsm import HsmError, open_ca_key

    init = [exe("kms-server"), "init", "--data-dir"]
    software = hsm.root / "software-ca"
    assert run([*init, str(software)]).returncode == 0
    stray = f"pkcs11:token={TOKEN};object=stray"
    refused = run([*init, str(software), *_flags(hsm, stray)])
    assert_one_line_error(refused, 6, "is ca.key, in software: --ca-key cannot move it")
    with pytest.raises(HsmError, match="has no private key 'stray'"):
        open_ca_key(stray, hsm.module, PIN)
    # served's init made object=ca as ECDSA P-256: another type is refused before anything is written.
    fresh = hsm.root / "typed"
    typed = run([*init, str(fresh), *_flags(hsm), "--ca-key-type", "rsa-3072"])
    assert_one_line_error(typed, 6, "is ecdsa-p256, not --ca-key-type rsa-3072")
    assert not (fresh / "master.key").exists() and not (fresh / "ca.crt").exists()
    # A data dir whose ca.crt went missing says so, in one line.
    assert run([*init, str(fresh), *_flags(hsm)]).returncode == 0
    (fresh / "ca.crt").unlink()
    assert_one_line_error(run([*init, str(fresh), *_flags(hsm)]), 6, "is incomplete: ca.crt is missing")


@pytest.mark.sqlite_only("no store here")
def test_every_key_type_signs_in_the_token(hsm: SoftHsm) -> None:
    """In this process: init's generation of each key type, and certificates, CRLs and OCSP answers
    signed with it."""
    from server.ca.authority import CertificateAuthority, create_external_root
    from server.ca.hsm import open_ca_key
    from server.ca.keytype import CAKeyType

    now = datetime.now(UTC)
    for key_type in CAKeyType:
        uri = f"pkcs11:token={TOKEN};object=types-{key_type.value}"
        key = open_ca_key(uri, hsm.module, PIN, generate=key_type)
        again = open_ca_key(uri, hsm.module, PIN, generate=key_type)  # one already there is used
        assert key.key_type is key_type and again.public_key() == key.public_key()
        root = create_external_root(key, "hsm.test", timedelta(days=1), now)
        public = root.cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        ca = CertificateAuthority(root, "hsm.test", timedelta(hours=1), lambda: now)
        pair = ca.issue_server(("localhost",), timedelta(hours=1))
        pair.cert.verify_directly_issued_by(root.cert)
        crl = ca.sign_crl([(5, now, x509.ReasonFlags.key_compromise)], 1, now, now + timedelta(hours=1))
        assert crl.is_signature_valid(public)
        good = ocsp.OCSPCertStatus.GOOD
        builder = ocsp.OCSPResponseBuilder().add_response(
            pair.cert, root.cert, hashes.SHA256(), good, now, now + timedelta(hours=1), None, None
        )
        answer = ca.sign_ocsp(builder)  # ExternalSigner verifies it with the CA's public key; again here:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(answer.signature, answer.tbs_response_bytes, padding.PKCS1v15(), hashes.SHA256())
        else:
            digest = hashes.SHA384() if key_type is CAKeyType.EC_P384 else hashes.SHA256()
            public.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(digest))
        key.close()
        again.close()


@pytest.mark.sqlite_only("no store here")
def test_a_failed_token_is_unavailable_then_logged_in_to_again(
    hsm: SoftHsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    from server.ca.authority import CertificateAuthority, create_external_root
    from server.ca.hsm import TokenDown, open_ca_key
    from server.ca.keytype import CAKeyType

    reads: list[str] = []

    def pin() -> str:
        reads.append(PIN)
        return PIN

    key = open_ca_key(f"pkcs11:token={TOKEN};object=runtime", hsm.module, pin, generate=CAKeyType.EC_P256)
    now = datetime.now(UTC)
    root = create_external_root(key, "hsm.test", timedelta(days=1), now)
    ca = CertificateAuthority(root, "hsm.test", timedelta(hours=1), lambda: now)
    key._session.close()  # the session is gone under the live key (as when the token is pulled)
    with pytest.raises(TokenDown) as err:
        asyncio.run(ca.issue_agent(rsa_key.public_key(), "web-1"))
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    assert f"the CA key's token {TOKEN!r} failed (" in err.value.message and PIN not in err.value.message
    assert len(reads) == 1
    cert = asyncio.run(ca.issue_agent(rsa_key.public_key(), "web-1"))  # logged in again, PIN read again
    cert.verify_directly_issued_by(root.cert)
    assert len(reads) == 2
    key.close()
    reads.clear()
    ca.issue_server(("localhost",), timedelta(hours=1))  # a closed key logs in again too
    assert reads == [PIN]
    key.close()


@pytest.mark.sqlite_only("no store here")
def test_a_refused_pin_is_not_offered_again_until_it_changes(hsm: SoftHsm) -> None:
    """Anyone can make the server sign (OCSP): a wrong PIN must not be tried once per request."""
    from server.ca.hsm import TokenDown, open_ca_key
    from server.ca.keytype import CAKeyType

    pins = [PIN]
    key = open_ca_key(
        f"pkcs11:token={TOKEN};object=refused", hsm.module, lambda: pins[-1], generate=CAKeyType.EC_P256
    )
    key.close()  # as after a token failure: the next signature logs in again
    pins.append("0000")  # the PIN file now holds a wrong PIN
    with pytest.raises(TokenDown, match="wrong PIN"):
        key._sign_in_token(b"tbs")
    with pytest.raises(TokenDown, match="not offered again until the PIN"):
        key._sign_in_token(b"tbs")  # no login: the token never sees that PIN twice
    pins.append(PIN)  # fixed: tried at once
    key._sign_in_token(b"tbs")
    key.close()


@pytest.mark.sqlite_only(
    "no store here; in this process python-pkcs11 loads SoftHSM2 once, with the SQLite module's token"
)
def test_a_key_is_made_only_for_a_new_ca_and_of_the_asked_type(hsm: SoftHsm) -> None:
    from server.ca.hsm import HsmError, HsmKey, PendingKey, _open, open_ca_key
    from server.ca.keytype import CAKeyType

    uri = f"pkcs11:token={TOKEN};object=pending"
    pending = _open(uri, hsm.module, PIN, generate=None, pending=True)
    assert isinstance(pending, PendingKey)
    with pytest.raises(HsmError, match="has no private key 'pending'"):
        pending.existing()  # an existing deployment: nothing is made
    with pytest.raises(HsmError, match="has no private key 'pending'"):
        open_ca_key(uri, hsm.module, PIN)
    pending = _open(uri, hsm.module, PIN, generate=None, pending=True)
    assert isinstance(pending, PendingKey)
    made = pending.for_new_ca(CAKeyType.EC_P384)
    assert made.key_type is CAKeyType.EC_P384
    found = _open(uri, hsm.module, PIN, generate=None, pending=True)
    assert isinstance(found, HsmKey) and found.public_key() == made.public_key()
    with pytest.raises(HsmError, match="is ecdsa-p384, not --ca-key-type rsa-3072"):
        found.for_new_ca(CAKeyType.RSA_3072)
    made.close()
    found.close()


@pytest.mark.sqlite_only("no store here")
def test_a_second_login_in_the_process_still_checks_its_pin(hsm: SoftHsm) -> None:
    from server.ca.hsm import HsmError, open_ca_key
    from server.ca.keytype import CAKeyType

    first = open_ca_key(f"pkcs11:token={TOKEN};object=one", hsm.module, PIN, generate=CAKeyType.EC_P256)
    try:  # the token is logged in: it would let any PIN through as "already logged in"
        with pytest.raises(HsmError, match=f"wrong PIN for token {TOKEN!r}"):
            open_ca_key(f"pkcs11:token={TOKEN};object=one", hsm.module, "0000")
        open_ca_key(f"pkcs11:token={TOKEN};object=one", hsm.module, PIN).close()
    finally:
        first.close()


@pytest.mark.sqlite_only("in this process: python-pkcs11 loads SoftHSM2 once, with the SQLite module's token")
def test_rotation_makes_the_next_key_in_the_same_token(hsm: SoftHsm, tmp_path: Path) -> None:
    """ca rotate on a token CA: the next key is made in the token under its own label, never
    extractable; activation opens it from its key_uri; a label already taken is refused, and a key
    the store did not record is destroyed."""
    from kms.errors import FailedPrecondition
    from server.ca.authority import CertificateAuthority, create_external_root
    from server.ca.generation_keys import TokenAccess, open_generation_signer
    from server.ca.hsm import HsmError, open_ca_key
    from server.ca.keytype import CAKeyType
    from server.ca.rotation import CARotation
    from server.ca.trust import CATrust
    from server.deployment.sealing import Sealer
    from server.store import open_store

    uri, now, ttl = f"pkcs11:token={TOKEN};object=rot", datetime.now(UTC), timedelta(days=30)
    _flags(hsm)  # writes the PIN file
    access = TokenAccess(uri, hsm.module, hsm.root / "pin")
    first = create_external_root(open_ca_key(uri, hsm.module, PIN, generate=CAKeyType.EC_P256), "t", ttl, now)

    def rotation(store: Any, ca: CertificateAuthority, token: TokenAccess | None = access) -> CARotation:
        trust = CATrust(store, ca, Sealer(bytes(32)), token)
        return CARotation(
            store, ca, trust, Sealer(bytes(32)), lambda: now, ttl, uri, lambda e: None, token=token
        )

    async def body() -> None:
        store = await open_store(None, tmp_path / "kms.db")
        ca = CertificateAuthority(first, "t", timedelta(hours=1), lambda: now)
        try:
            rotating = rotation(store, ca)
            await rotating.adopt()
            made = await rotating.rotate(None)  # the active CA's type
            assert (made.key_type, made.sealed_key) == ("ecdsa-p256", None)
            assert made.key_uri == f"pkcs11:token={TOKEN};object=rot-g2"
            new = x509.load_pem_x509_certificate(made.certificate.encode())
            assert _token_key("rot-g2", hsm) == new.public_key()
            # Activation opens it from key_uri: this CA issues from the token's new key.
            await rotating.activate(now=True)
            assert ca.generation == 2 and ca.certificate == new
            ca.issue_server(("localhost",), timedelta(hours=1)).cert.verify_directly_issued_by(new)
            # A key made for a generation the store refuses (here: a server whose CA is not the
            # active one) is destroyed, and its label free again.
            stale = CertificateAuthority(first, "t", timedelta(hours=1), lambda: now)
            with pytest.raises(FailedPrecondition, match="is not the store's active CA"):
                await rotation(store, stale).rotate(CAKeyType.EC_P384)
            assert _token_key("rot-g3", hsm) is None
            # A label the token holds already is never overwritten.
            taken = open_ca_key(
                f"pkcs11:token={TOKEN};object=rot-g3", hsm.module, PIN, generate=CAKeyType.EC_P256
            )
            with pytest.raises(HsmError, match="already holds an object labelled 'rot-g3'"):
                await rotating.rotate(None)
            assert _token_key("rot-g3", hsm) == taken.public_key()
            assert [g.generation for g in await rotating.generations()] == [1, 2]
            _destroy_key("rot-g3", hsm)
            taken.close()
            # A prepared key gone from the token: activation refuses, and generation 2 stays active.
            await rotating.rotate(None)
            _destroy_key("rot-g3", hsm)
            with pytest.raises(
                HsmError, match="no longer holds the key pkcs11:token=kms-ca;object=rot-g3 of"
            ):
                await rotating.activate(now=True)
            assert [g.state for g in await rotating.generations()] == ["retiring", "active", "prepared"]
            # Keys stay where the first CA's is: a server without the token cannot use them.
            with pytest.raises(FailedPrecondition, match="moving between them by rotation is not supported"):
                await rotation(store, ca, None).rotate(None)
            (active,) = [g for g in await rotating.generations() if g.state == "active"]
            with pytest.raises(FailedPrecondition, match="give --ca-key|start kms-server with --ca-key"):
                open_generation_signer(
                    active, Sealer(bytes(32)), CATrust(store, ca, Sealer(bytes(32))).own, None
                )
            # ca cancel takes the prepared key out of the token (here gone already), so generation 3
            # can be made again under its label; cancelled again, its key leaves the token.
            await rotating.cancel()
            again = await rotating.rotate(None)
            assert again.generation == 3 and _token_key("rot-g3", hsm) is not None
            await rotating.cancel()
            assert _token_key("rot-g3", hsm) is None
            assert (await rotating.rotate(None)).key_uri == f"pkcs11:token={TOKEN};object=rot-g3"
        finally:
            await store.close()

    asyncio.run(body())


def _destroy_key(label: str, hsm: SoftHsm) -> None:
    import pkcs11

    with pkcs11.lib(str(hsm.module)).get_token(token_label=TOKEN).open(rw=True) as session:
        for found in list(session.get_objects({pkcs11.Attribute.LABEL: label})):
            found.destroy()


def _token_key(label: str, hsm: SoftHsm) -> Any:
    """The public key of the token's key labelled label (None: none), after checking that its
    private half is sensitive and was never extractable."""
    import pkcs11
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11.util.ec import encode_ec_public_key

    token = pkcs11.lib(str(hsm.module)).get_token(token_label=TOKEN)
    with token.open() as session:  # this process is logged in: private objects are listed
        found = list(session.get_objects({Attribute.LABEL: label, Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        if not found:
            return None
        (private,) = found
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
        assert private[Attribute.NEVER_EXTRACTABLE] and private[Attribute.TOKEN]
        assert private.key_type == KeyType.EC
        public = session.get_key(label=label, object_class=ObjectClass.PUBLIC_KEY)
        return load_der_public_key(encode_ec_public_key(public))


@pytest.mark.postgresql_only("a replica of a deployment whose CA key is in a token")
def test_a_replica_without_ca_key_says_where_the_key_is(served: tuple[ServerProcess, Path]) -> None:
    server, root = served
    assert server.database is not None
    replica = [exe("kms-server"), "init", "--data-dir", str(root / "replica"), "--database", server.database]
    result = run([*replica, "--master-key-file", str(server.data_dir / "master.key")])
    assert_one_line_error(result, 6, "this deployment's CA key is in a PKCS#11 token: give --ca-key")


def test_ca_rotate_and_activate_in_the_token(served: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    """Last in this module (it changes served's CA): ca rotate makes the next CA's key in the token,
    ca activate --now issues from it, a new agent's certificate chains to it (also after a restart,
    which opens it from key_uri), and ca status shows where each key is."""
    server, root = served
    rotated = server.admin("ca", "rotate")
    assert rotated.stdout.startswith("prepared CA generation 2 (ecdsa-p256, sha256:"), rotated.stdout
    assert server.admin("ca", "activate", "--now").stdout.startswith("activated CA generation 2")
    cas = json.loads(server.admin("ca", "status", "--json").stdout)
    assert [(c["generation"], c["state"], c["key_uri"]) for c in cas] == [
        (1, "retiring", URI),
        (2, "active", f"{URI}-g2"),
    ]
    (listed,) = [
        g for g in server.stub.ListCAs(admin_pb2.ListCAsRequest(), timeout=30).cas if g.generation == 2
    ]
    new = tmp_path / "new-ca.pem"
    new.write_text(listed.certificate_pem)
    for name, restart in (("after", False), ("restarted", True)):
        if restart:
            assert server.stop() == 0, server.output()
            server.start()
        # New agents pin the active CA (kms-server ca fingerprint), generation 2.
        result = enroll(server, root / name, server.token(name), ca_fingerprint=cas[1]["fingerprint"])
        assert result.returncode == 0, result.stderr
        ok = run(["openssl", "verify", "-CAfile", str(new), str(root / name / "agent.crt")])
        assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stdout + ok.stderr
    assert server.fingerprint == cas[1]["fingerprint"]  # the restarted server issues with generation 2
    assert b"PRIVATE KEY" not in store_bytes(server) and not (server.data_dir / "ca.key").exists()
