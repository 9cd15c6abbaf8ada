"""server/ca/pkcs11uri.py: RFC 7512 URIs as --ca-key takes them (pure)."""

from __future__ import annotations

import pytest

from kms.errors import InvalidArgument
from server.ca.pkcs11uri import Pkcs11Uri, parse_pkcs11_uri


@pytest.mark.parametrize(
    "text, expected",
    [
        ("pkcs11:token=kms-ca;object=ca", Pkcs11Uri("kms-ca", "ca")),
        ("PKCS11:object=ca;token=kms-ca;type=private", Pkcs11Uri("kms-ca", "ca")),
        ("pkcs11:token=My%20Token;id=%01%a2", Pkcs11Uri("My Token", id=b"\x01\xa2")),
        (
            "pkcs11:token=t;object=k;serial=42;manufacturer=SoftHSM%20project;model=SoftHSM%20v2",
            Pkcs11Uri("t", "k", serial="42", manufacturer="SoftHSM project", model="SoftHSM v2"),
        ),
        ("pkcs11:token=caf%C3%A9;object=a:b@c", Pkcs11Uri("café", "a:b@c")),
    ],
)
def test_parses_the_attributes_that_name_a_key(text: str, expected: Pkcs11Uri) -> None:
    assert parse_pkcs11_uri(text) == expected
    assert parse_pkcs11_uri(str(expected)) == expected  # str() writes a URI that parses back


@pytest.mark.parametrize(
    "text, says",
    [
        ("token=kms;object=ca", "must be a PKCS#11 URI"),
        ("pkcs11:object=ca", "must name the token"),
        ("pkcs11:token=kms", "must name the key"),
        ("pkcs11:token=kms;object=ca?pin-value=1234", "the PIN never goes in the URI"),
        ("pkcs11:token=kms;object=ca?pin-source=file:/p", "the PIN never goes in the URI"),
        ("pkcs11:token=kms;object=ca?module-path=/x.so", "query attributes are not supported"),
        ("pkcs11:token=kms;object=ca;slot-id=1", "unsupported attribute 'slot-id'"),
        ("pkcs11:token=kms;token=other;object=ca", "given twice"),
        ("pkcs11:token=kms;object", "is not NAME=VALUE"),
        ("pkcs11:token=kms;object=a b", "percent-encoded"),
        ("pkcs11:token=kms;object=%zz", "percent-encoded"),
        ("pkcs11:token=%ff;object=ca", "token is not UTF-8"),
        ("pkcs11:token=kms;object=ca;type=public", "type must be private"),
    ],
)
def test_refuses_what_cannot_name_one_private_key(text: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_pkcs11_uri(text)
    assert says in str(err.value)
    assert "1234" not in str(err.value)  # a PIN put in the URI is never echoed
