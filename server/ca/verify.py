"""Which CA generations of the store this server may use (issue 19 §1): only verified ones.

The store is not trusted on its own word. Generation 1 must be this deployment's own CA (the
data dir's, or the token's the server started with); a generation N ≥ 2 is used (trusted,
issued with, put in the bundle) only when its certificate is self-signed and its
cross-certificate verifies (kms.cabundle.check_cross) from generation N-1, itself verified: its
signature and form, as of its own start (the check is about where a row comes from, not time:
a generation stays usable after the CA that vouched for it expired).
Only N-1: rotation always cross-certifies generation N by the CA active when N was prepared, which
is N-1 (numbers are MAX+1, a cancelled one's number is used again). Any other generation vouching
for N (a retired one, whose key may have leaked) marks a row written by someone else.
A row that fails is logged once, as an error, and ignored: fail closed.
"""

from __future__ import annotations

import logging

from cryptography import x509

from kms import cabundle
from server.store.sql.cas import CAGeneration

__all__ = ["GenerationCheck"]

logger = logging.getLogger(__name__)


class GenerationCheck:
    def __init__(self, own: x509.Certificate) -> None:
        self._own = own  # generation 1: the deployment's CA
        self._logged: set[tuple[int, str]] = set()  # (generation, why): each bad row once

    def verified(self, rows: list[CAGeneration]) -> list[CAGeneration]:
        """The rows that verify, oldest first (every state: a retired one still vouches for the next)."""
        good: dict[int, tuple[CAGeneration, x509.Certificate]] = {}
        for row in sorted(rows, key=lambda r: r.generation):
            before = good.get(row.generation - 1)
            why, cert = self._check(row, None if before is None else before[1])
            if why is None and cert is not None:
                good[row.generation] = (row, cert)
            elif (row.generation, why or "") not in self._logged:
                self._logged.add((row.generation, why or ""))
                logger.error(
                    "CA generation %d in the store is ignored (not used, not trusted): %s",
                    row.generation,
                    why,
                )
        return [row for row, _ in good.values()]

    def _check(
        self, row: CAGeneration, anchor: x509.Certificate | None
    ) -> tuple[str | None, x509.Certificate | None]:
        try:
            cert = x509.load_pem_x509_certificate(row.certificate.encode())
        except ValueError:
            return "its certificate is not PEM", None
        if row.generation == 1:
            if cert != self._own:
                return "it is not this server's CA (start every replica with the deployment's CA)", None
            return None, cert
        try:
            cert.verify_directly_issued_by(cert)
        except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError
            return "its certificate is not self-signed", None
        if row.cross_certificate is None:
            return f"it has no cross-certificate from generation {row.generation - 1}", None
        try:
            cross = x509.load_pem_x509_certificate(row.cross_certificate.encode())
        except ValueError:
            return "its cross-certificate is not PEM", None
        if anchor is None:
            return f"generation {row.generation - 1}, which must vouch for it, is not verified", None
        try:
            # Integrity, not time: checked as of its own start, so the generation stays usable
            # after the CA that vouched for it (and with it the cross-certificate) expired.
            cabundle.check_cross(cross, cert, anchor, cross.not_valid_before_utc)
        except cabundle.BundleError as exc:
            return f"its cross-certificate does not verify from generation {row.generation - 1}: {exc}", None
        return None, cert
