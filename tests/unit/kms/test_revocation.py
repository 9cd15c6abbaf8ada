"""kms/revocation.py: the reasons operators type, and certificateHold."""

from __future__ import annotations

import pytest
from cryptography import x509

from kms.errors import InvalidArgument
from kms.revocation import CA_COMPROMISE, CRL_REASONS, HOLD, REASONS, parse_reason


@pytest.mark.parametrize(
    "name, allow_hold, expected",
    [
        pytest.param("", False, "unspecified", id="default"),
        pytest.param("keyCompromise", False, "keyCompromise", id="final"),
        pytest.param("certificateHold", True, "certificateHold", id="hold-where-allowed"),
        pytest.param("keyCompromise", True, "keyCompromise", id="final-where-hold-allowed"),
    ],
)
def test_accepted(name: str, allow_hold: bool, expected: str) -> None:
    assert parse_reason(name, allow_hold=allow_hold) == expected


@pytest.mark.parametrize(
    "name, allow_hold",
    [
        pytest.param("certificateHold", False, id="hold-for-a-key"),
        pytest.param("removeFromCRL", True, id="remove-is-no-reason-to-revoke"),
        pytest.param("keycompromise", True, id="case-matters"),
    ],
)
def test_refused(name: str, allow_hold: bool) -> None:
    with pytest.raises(InvalidArgument, match=repr(name)):
        parse_reason(name, allow_hold=allow_hold)


def test_ca_compromise_is_the_cas_not_an_operators_for_one_certificate() -> None:
    """Only an emergency CA rotation revokes with it (agents then stop trusting that CA)."""
    for allow_hold in (False, True):
        with pytest.raises(InvalidArgument, match="kms-server ca rotate --now --revoke-old"):
            parse_reason(CA_COMPROMISE, allow_hold=allow_hold)


def test_crl_reasons_add_the_hold_and_the_cas_compromise() -> None:
    assert CRL_REASONS[HOLD] is x509.ReasonFlags.certificate_hold
    assert CRL_REASONS[CA_COMPROMISE] is x509.ReasonFlags.ca_compromise
    assert {k: v for k, v in CRL_REASONS.items() if k not in (HOLD, CA_COMPROMISE)} == REASONS
    assert HOLD not in REASONS and "removeFromCRL" not in CRL_REASONS
