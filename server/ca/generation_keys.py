"""Opening a CA generation's key (issue 19): the one place that turns a stored generation into
something that signs.

Generation 1 is the deployment's own CA: its key is the data dir's (or the token the server was
started with), which the caller passes as ``own``. A later generation's key is either sealed in
the store under the master key (software) or in the deployment's PKCS#11 token (key_uri:
hsm_generations.py, opened with the server's --pkcs11-module and PIN source). A deployment keeps
its keys where its first CA's is: a software CA rotates in software, a token CA in the same token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from kms.errors import FailedPrecondition
from server.ca.authority import external_root
from server.ca.signer import CARoot, CASigner, SoftwareSigner
from server.deployment.datadir import open_cert, open_pair
from server.deployment.sealing import Sealer
from server.store.sql.cas import CAGeneration

__all__ = ["CA_SLOT", "KEYS_STAY_PUT", "TokenAccess", "check_generation_key", "open_generation_signer"]

# The sealing slot of every CA key, as the deployment's own (deployment.py's _CA_SLOT).
CA_SLOT = "ca.key"
KEYS_STAY_PUT = (
    "a deployment keeps its CA keys where its first CA's is (in software, or in its PKCS#11 token):"
    " moving between them by rotation is not supported"
)


@dataclass(frozen=True)
class TokenAccess:
    """How this server reaches its CA's token: --ca-key (the configured URI), --pkcs11-module and
    --pkcs11-pin-file (else KMS_PKCS11_PIN), read again at each login."""

    uri: str
    module: Path | None
    pin_file: Path | None

    def pin(self) -> str:
        from server.ca.hsm import read_pin  # python-pkcs11 is imported only with --ca-key

        return read_pin(self.pin_file)


def open_generation_signer(
    generation: CAGeneration, sealer: Sealer, own: CARoot, token: TokenAccess | None
) -> CASigner:
    """The signer of generation, checked to be its certificate's key.

    Raises:
        FailedPrecondition: the key cannot be opened (one line: which generation, why, what to do).
        DataDirError: a sealed key that does not open, or is not the certificate's.
    """
    name = f"CA generation {generation.generation}"
    if generation.generation == 1:
        if _cert(generation.certificate) == own.cert:
            return own.signer
        raise FailedPrecondition(
            f"{name} is not this server's CA: start every replica with the same data dir's CA"
        )
    if generation.key_uri is not None:
        if token is None:
            raise FailedPrecondition(
                f"{name}'s key is in a PKCS#11 token ({generation.key_uri}): start kms-server with --ca-key,"
                f" --pkcs11-module and the PIN; {KEYS_STAY_PUT}"
            )
        from server.ca.hsm_generations import open_generation_key  # only with --ca-key

        key = open_generation_key(token, generation.key_uri)
        cert = open_cert(generation.certificate.encode(), f"{name}'s certificate")
        try:
            return external_root(cert, key, None, f"{name} ({generation.key_uri})").signer
        except BaseException:
            key.close()
            raise
    if generation.sealed_key is None:
        raise FailedPrecondition(f"{name} has no key this server can use (neither sealed nor in a token)")
    pair = open_pair(
        generation.certificate.encode(),
        generation.sealed_key,
        sealer,
        slot=CA_SLOT,
        cert_name=f"{name}'s certificate",
        key_name=f"{name}'s key",
        master_name="the master key",
    )
    return SoftwareSigner(pair.key)


def check_generation_key(
    generation: CAGeneration, sealer: Sealer, own: CARoot, token: TokenAccess | None
) -> None:
    """Opens generation's key and closes it again, before an activation makes it the one that
    issues: a key that cannot be opened (gone from the token) leaves it prepared, rather than
    active with no replica able to follow it. Raises as open_generation_signer does."""
    signer = open_generation_signer(generation, sealer, own, token)
    close = getattr(signer, "close", None)
    if close is not None and signer is not own.signer:  # a token key's own session
        close()


def _cert(pem: str) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
