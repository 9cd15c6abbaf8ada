"""A CA key held outside this process (a PKCS#11 token): it only has to ``sign(data)``.

cryptography cannot sign a builder with a key it does not hold, so a throwaway
in-memory key of the same family signs first: that yields the to-be-signed
bytes exactly as cryptography encodes them (the TBS names the signature
algorithm, which depends on the key family and the hash only, never on the key).
The external key then signs those bytes, and asn1crypto assembles the DER
Certificate, CertificateList or BasicOCSPResponse around them with the real
signature. The result is loaded and verified with cryptography against the CA's
public key before anything uses it. No primitive is written here: hashing and
signing are the token's (or cryptography's), and DER assembly is asn1crypto's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from kms import profile
from server.ca.signer import PublicKey, public_key_type, signature_hash

__all__ = ["ExternalSigner", "SignerError"]


class SignerError(Exception):
    """The external key produced a signature that does not verify: nothing signed is used."""


@functools.cache
def _stand_in(rsa_family: bool) -> tuple[profile.IssuerKey, x509.Certificate]:
    """A throwaway key of the family (and a certificate for it, which the OCSP builder wants) only to
    have cryptography encode a TBS; its signature is discarded."""
    key: profile.IssuerKey
    if rsa_family:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = profile.ca_builder(key.public_key(), "stand-in.invalid", 1, now, timedelta(days=1))
    return key, builder.sign(key, hashes.SHA256())


class ExternalSigner:
    """A key held elsewhere: ``sign(data)`` returns an X.509 signature over data (ECDSA in DER)."""

    in_software = False
    slow = True

    def __init__(self, public: PublicKey, sign: Callable[[bytes], bytes]) -> None:
        key_type = public_key_type(public)
        if key_type is None:
            raise ValueError("unsupported CA key: ECDSA P-256/P-384 or RSA-3072/4096")
        self.key_type = key_type
        self._public = public
        self._sign = sign
        self._hash = signature_hash(key_type)
        self._stand_in, self._stand_in_cert = _stand_in(isinstance(public, rsa.RSAPublicKey))

    def public_key(self) -> PublicKey:
        return self._public

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        draft = asn1_x509.Certificate.load(self._draft(builder))
        signed, tbs = self._around(
            asn1_x509.Certificate, "tbs_certificate", draft["tbs_certificate"], draft, "signature_value"
        )
        cert = x509.load_der_x509_certificate(signed.dump())
        self._verify(cert.signature, cert.tbs_certificate_bytes, tbs)
        return cert

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        draft = asn1_crl.CertificateList.load(self._draft(builder))
        signed, tbs = self._around(
            asn1_crl.CertificateList, "tbs_cert_list", draft["tbs_cert_list"], draft, "signature"
        )
        crl = x509.load_der_x509_crl(signed.dump())
        self._verify(crl.signature, crl.tbs_certlist_bytes, tbs)
        return crl

    def sign_ocsp(self, builder: ocsp.OCSPResponseBuilder, responder: x509.Certificate) -> ocsp.OCSPResponse:
        """builder has no responder ID yet: the stand-in's goes in the draft, the responder's in the TBS."""
        draft_builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self._stand_in_cert)
        draft = asn1_ocsp.OCSPResponse.load(self._draft(draft_builder))
        basic = draft["response_bytes"]["response"].parsed
        data = basic["tbs_response_data"]
        # RFC 6960 KeyHash: SHA-1 of the responder's subjectPublicKey, as cryptography's HASH encoding writes it.
        key_hash = x509.SubjectKeyIdentifier.from_public_key(responder.public_key()).digest
        data["responder_id"] = asn1_ocsp.ResponderId(name="by_key", value=key_hash)
        signed, tbs = self._around(asn1_ocsp.BasicOCSPResponse, "tbs_response_data", data, basic, "signature")
        response = asn1_ocsp.OCSPResponse(
            {
                "response_status": "successful",
                "response_bytes": {"response_type": "basic_ocsp_response", "response": signed},
            }
        )
        loaded = ocsp.load_der_ocsp_response(response.dump())
        self._verify(loaded.signature, loaded.tbs_response_bytes, tbs)
        return loaded

    def _draft(
        self,
        builder: x509.CertificateBuilder | x509.CertificateRevocationListBuilder | ocsp.OCSPResponseBuilder,
    ) -> bytes:
        """The object signed by the stand-in: cryptography's encoding of the TBS, to re-sign."""
        return builder.sign(self._stand_in, self._hash).public_bytes(serialization.Encoding.DER)

    def _around(
        self, kind: Any, tbs_field: str, tbs_value: Any, draft: Any, signature_field: str
    ) -> tuple[Any, bytes]:
        """kind (Certificate, CertificateList, BasicOCSPResponse) around tbs_value, signed here, with
        the draft's signature algorithm; and the TBS bytes that were signed."""
        tbs = tbs_value.dump()
        fields = {
            tbs_field: tbs_value,
            "signature_algorithm": draft["signature_algorithm"],
            signature_field: self._sign(tbs),
        }
        return kind(fields), tbs

    def _verify(self, signature: bytes, tbs_loaded: bytes, tbs: bytes) -> None:
        """The assembled object must carry the very TBS that was signed, under a valid signature."""
        try:
            if tbs_loaded != tbs:
                raise InvalidSignature
            if isinstance(self._public, rsa.RSAPublicKey):
                self._public.verify(signature, tbs, padding.PKCS1v15(), self._hash)
            else:
                self._public.verify(signature, tbs, ec.ECDSA(self._hash))
        except InvalidSignature:
            raise SignerError("the CA key's signature does not verify with the CA's public key") from None
