"""Certificate renewal: a new key, a CSR, and the current certificate as the proof of identity."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from agent.client import KmsClient
from agent.issuance import accept_issued, new_key_and_csr, trust_domain_of
from agent.state import AgentIdentity, StateDir

__all__ = ["DEFAULT_RENEW_FRACTION", "renew", "renewal_due"]

logger = logging.getLogger(__name__)

DEFAULT_RENEW_FRACTION = 2 / 3


def renewal_due(identity: AgentIdentity, fraction: float, now: datetime | None = None) -> bool:
    start, end = identity.cert.not_valid_before_utc, identity.cert.not_valid_after_utc
    return (now or datetime.now(UTC)) >= start + (end - start) * fraction


def renew(state: StateDir, identity: AgentIdentity, client: KmsClient) -> AgentIdentity:
    """Renews now (with a new key of the same size) and saves the result; returns the new identity."""
    key, csr_der = new_key_and_csr(identity.key.key_size)
    resp = client.renew(csr_der)
    ca = identity.roots
    trust_domain = trust_domain_of(identity.settings.spiffe_id)
    cert = accept_issued(resp.certificate_der, ca, trust_domain, identity.settings.name, key)
    renewed = AgentIdentity(identity.settings, key, cert, identity.ca_bundle_pem, identity.anchors)
    state.save(renewed)
    logger.info(
        "certificate renewed",
        extra={"serial": format(cert.serial_number, "x"), "not_after": cert.not_valid_after_utc.isoformat()},
    )
    return renewed
