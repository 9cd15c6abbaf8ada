"""Checks on an agent's certificate signing request.

The CA copies nothing from a CSR but its public key, so the only things worth
checking are that the request parses, that it is signed by the key it carries
(proof of possession), and that the key is an RSA key we accept.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.errors import InvalidArgument

__all__ = ["ALLOWED_RSA_BITS", "MAX_CSR_BYTES", "check_csr"]

# DESIGN: agent keys are RSA 2048 (default), 3072 or 4096.
ALLOWED_RSA_BITS = (2048, 3072, 4096)
MAX_CSR_BYTES = 16 * 1024
_RSA_EXPONENT = 65537


def check_csr(csr_der: bytes) -> rsa.RSAPublicKey:
    """Returns the CSR's public key after checking the request.

    Args:
        csr_der: a PKCS#10 request, DER.

    Raises:
        InvalidArgument: empty or oversized, not a CSR, bad self-signature,
            or a key that is not RSA 2048/3072/4096 with exponent 65537.

    Returns:
        The RSA public key, the only thing the CA will take from the request.
    """
    if not csr_der:
        raise InvalidArgument("CSR is empty: send a DER PKCS#10 request")
    if len(csr_der) > MAX_CSR_BYTES:
        raise InvalidArgument(f"CSR is larger than {MAX_CSR_BYTES} bytes: send a plain RSA request")
    try:
        csr = x509.load_der_x509_csr(csr_der)
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidArgument("CSR is not a valid DER PKCS#10 request") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidArgument("CSR key must be RSA (2048, 3072 or 4096 bits)")
    if key.key_size not in ALLOWED_RSA_BITS:
        raise InvalidArgument(f"CSR key is RSA-{key.key_size}: use 2048, 3072 or 4096 bits")
    if key.public_numbers().e != _RSA_EXPONENT:
        raise InvalidArgument("CSR key must use the RSA public exponent 65537")
    # Checked last: the cheap checks above turn junk away before any RSA work.
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        signature_ok = False
    if not signature_ok:
        raise InvalidArgument(
            "CSR signature does not verify with its own key: sign it with the key it carries"
        )
    return key
