"""server/ca/hsm.py at runtime, in a real SoftHSM2 token: a token that fails mid-life is one
UNAVAILABLE line and is logged in to again; a key is made only when init asks for a new CA; a
second login in the process still checks its PIN."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from server.ca.authority import CertificateAuthority, create_external_root
from server.ca.hsm import HsmError, HsmKey, PendingKey, TokenDown, _open, open_ca_key
from server.ca.keytype import CAKeyType
from tests.harness import short_tmpdir
from tests.softhsm import SoftHsm

TOKEN, PIN = "kms-rt", "5930-test"


@pytest.fixture(scope="module")
def hsm() -> Iterator[SoftHsm]:
    root = short_tmpdir("kmshsmrt")
    token = SoftHsm(root)
    try:
        token.init_token(TOKEN, PIN)
        yield token
    finally:
        token.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_failed_token_is_unavailable_then_logged_in_to_again(
    hsm: SoftHsm, rsa_key: rsa.RSAPrivateKey
) -> None:
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


def test_a_key_is_made_only_for_a_new_ca_and_of_the_asked_type(hsm: SoftHsm) -> None:
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


def test_a_second_login_in_the_process_still_checks_its_pin(hsm: SoftHsm) -> None:
    first = open_ca_key(f"pkcs11:token={TOKEN};object=one", hsm.module, PIN, generate=CAKeyType.EC_P256)
    try:  # the token is logged in: it would let any PIN through as "already logged in"
        with pytest.raises(HsmError, match=f"wrong PIN for token {TOKEN!r}"):
            open_ca_key(f"pkcs11:token={TOKEN};object=one", hsm.module, "0000")
        open_ca_key(f"pkcs11:token={TOKEN};object=one", hsm.module, PIN).close()
    finally:
        first.close()
