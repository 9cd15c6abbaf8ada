"""Opening a CA generation's key (issue 19 §1): the one place that turns a stored generation into
something that signs.

Generation 1 is the deployment's own CA: its key is the data dir's (or the token the server was
started with), which the caller passes as ``own``. A later generation's key is either sealed in
the store under the master key (software) or in a PKCS#11 token (key_uri): the token part is not
built yet and raises FailedPrecondition; it plugs in here.
"""

from __future__ import annotations

from cryptography import x509

from kms.errors import FailedPrecondition
from server.ca.signer import CARoot, CASigner, SoftwareSigner
from server.deployment.datadir import open_pair
from server.deployment.sealing import Sealer
from server.store.sql.cas import CAGeneration

__all__ = ["CA_SLOT", "open_generation_signer"]

# The sealing slot of every CA key, as the deployment's own (deployment.py's _CA_SLOT).
CA_SLOT = "ca.key"


def open_generation_signer(generation: CAGeneration, sealer: Sealer, own: CARoot) -> CASigner:
    """The signer of generation. Raises FailedPrecondition (a key in a token, or none this server
    can use) or DataDirError (a sealed key that does not open, or not the certificate's)."""
    if generation.sealed_key is not None:
        pair = open_pair(
            generation.certificate.encode(),
            generation.sealed_key,
            sealer,
            slot=CA_SLOT,
            cert_name=f"CA generation {generation.generation}'s certificate",
            key_name=f"CA generation {generation.generation}'s key",
            master_name="the master key",
        )
        return SoftwareSigner(pair.key)
    if generation.key_uri is not None and generation.generation != 1:
        raise FailedPrecondition(
            f"CA generation {generation.generation}'s key is in a PKCS#11 token ({generation.key_uri}):"
            " signing with a later generation's token key is not supported yet"
        )
    if generation.generation == 1 and _cert(generation.certificate) == own.cert:
        return own.signer
    raise FailedPrecondition(
        f"CA generation {generation.generation} has no key this server can use"
        " (generation 1 is the deployment's CA: start every replica with the same data dir's CA)"
    )


def _cert(pem: str) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
