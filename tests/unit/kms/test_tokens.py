"""kms/tokens.py: format, known answers, and no leaks."""

from __future__ import annotations

import hashlib

import pytest

from kms.errors import InvalidArgument
from kms.tokens import JoinToken, hash_secret, secret_matches

ID = bytes(range(8))
SECRET = bytes(range(32))


def test_known_answer() -> None:
    token = JoinToken.from_parts(ID, SECRET)
    assert str(token) == "0001020304050607.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
    assert token.secret_hash == hashlib.sha256(b"seed-kms join token v1\x00" + SECRET).digest()


def test_round_trip_and_match() -> None:
    token = JoinToken.generate()
    parsed = JoinToken.parse(str(token))
    assert parsed == token
    assert secret_matches(parsed, token.secret_hash)
    assert not secret_matches(JoinToken.from_parts(ID, SECRET), token.secret_hash)


def test_generated_tokens_differ() -> None:
    assert len({str(JoinToken.generate()) for _ in range(100)}) == 100


def test_repr_never_shows_the_secret() -> None:
    token = JoinToken.from_parts(ID, SECRET)
    assert str(token).split(".")[1] not in repr(token)
    assert "redacted" in repr(token)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "0001020304050607",
        "0001020304050607.short",
        "XYZ1020304050607.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "0001020304050607.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8x",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument):
        JoinToken.parse(text)


def test_hash_is_domain_separated() -> None:
    assert hash_secret(SECRET) != hashlib.sha256(SECRET).digest()


def test_only_the_canonical_spelling_parses() -> None:
    text = str(JoinToken.from_parts(ID, SECRET))
    # The last base64 character carries 2 unused bits: '8' (60) and '9' (61) decode to the same secret.
    assert text.endswith("8")
    with pytest.raises(InvalidArgument):
        JoinToken.parse(text[:-1] + "9")
