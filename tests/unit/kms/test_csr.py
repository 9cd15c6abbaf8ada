"""kms/csr.py: only a well-formed, self-signed RSA 2048/3072/4096 request passes."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kms.csr import MAX_CSR_BYTES, check_csr
from kms.errors import InvalidArgument
from tests.pki import csr_der


def test_good_csr_returns_its_key(rsa_key: rsa.RSAPrivateKey) -> None:
    assert check_csr(csr_der(rsa_key)) == rsa_key.public_key()


def _flip_signature(der: bytes) -> bytes:
    b = bytearray(der)
    b[-3] ^= 0x40
    return bytes(b)


@pytest.mark.parametrize(
    "make, needle",
    [
        pytest.param(lambda k: b"", "empty", id="empty"),
        pytest.param(lambda k: b"\x00" * (MAX_CSR_BYTES + 1), "larger than", id="oversized"),
        pytest.param(lambda k: b"garbage", "not a valid DER", id="garbage"),
        pytest.param(lambda k: _flip_signature(csr_der(k)), "signature", id="bad-signature"),
        pytest.param(lambda k: csr_der(ec.generate_private_key(ec.SECP256R1())), "must be RSA", id="ec-p256"),
        pytest.param(lambda k: csr_der(rsa.generate_private_key(65537, 1024)), "RSA-1024", id="rsa-1024"),
        pytest.param(lambda k: csr_der(rsa.generate_private_key(3, 2048)), "65537", id="exponent-3"),
    ],
)
def test_bad_csr(rsa_key: rsa.RSAPrivateKey, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=needle):
        check_csr(make(rsa_key))
