"""The CA's key types: chosen at init, fixed for the deployment's life."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CAKeyType"]


class CAKeyType(StrEnum):
    # ECDSA P-256 is the default: the field's usual choice (step-ca, SPIRE),
    # 128-bit security, small certificates, and roughly ten times faster to
    # sign with than RSA-3072, which matters for a CA on the enrollment path.
    EC_P256 = "ecdsa-p256"
    EC_P384 = "ecdsa-p384"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
