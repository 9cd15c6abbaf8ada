"""Managed key pairs (issue 16 §4) in KeyService over a real store, on both backends: the type is
stored, each version's pair is sealed in its own slot with its public key beside it, the private
key leaves only wrapped (format 2), and a request of the wrong kind releases nothing (and is audited)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kms import keypairs
from kms.errors import FailedPrecondition, InvalidArgument, PermissionDenied, WrongKeyType
from kms.wrap import unwrap_private_key
from server.deployment.sealing import Sealer
from server.endpoints.authn import Caller
from server.keys import KeyService
from server.keys.pairs import pair_slot
from server.store import Store
from tests.unit.server.conftest import open_store_at

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SEALER = Sealer(bytes(range(32)))


def _caller(key: rsa.RSAPrivateKey, name: str = "web-1", groups: tuple[str, ...] = ("web",)) -> Caller:
    return Caller(name, groups, "abc123", f"spiffe://t/agent/{name}", NOW, NOW, key.public_key())


async def _releases(store: Store) -> int:
    """Every release recorded (the release log, through the audit trail's key.release records)."""
    return sum(1 for r in await store.audit_after(0, 1000) if r.action == "key.release" and r.outcome == "ok")


def test_a_key_pair_is_made_sealed_released_and_published(
    store_at: tuple[str, str], rsa_key: rsa.RSAPrivateKey
) -> None:
    async def body() -> None:
        store = await open_store_at(*store_at)
        keys = KeyService(store, SEALER, lambda: NOW, publish=lambda event: None)
        try:
            created = (await keys.create("signer", ["group:web"], key_type="ec-p256")).record
            assert created.key_type == "ec-p256" and created.versions[0].public_key is not None
            caller = _caller(rsa_key)
            got = await keys.fetch(caller, "signer", 0, key_pair=True)
            assert (got.key_type, got.version.version) == ("ec-p256", 1)
            # Sealed under the pair's own slot; the released key matches the published one.
            assert SEALER.open(pair_slot("signer", 1), got.version.sealed_material or b"")
            pkcs8 = unwrap_private_key(rsa_key, got.wrapped, "signer", 1, "abc123")
            private = keypairs.load_private_key(pkcs8, "ec-p256")
            published = await keys.public_key(caller, "signer", 1)
            assert published.der == keypairs.public_der(private) == created.versions[0].public_key
            assert (published.key_type, published.version.state) == ("ec-p256", "active")
            # Rotation makes a new pair (the type is read from the store); v1 is still published.
            rotated = await keys.rotate("signer")
            assert [v.state for v in rotated.versions] == ["deactivated", "active"]
            assert rotated.versions[1].public_key not in (None, published.der)
            assert (await keys.public_key(caller, "signer", 0)).version.version == 2
            assert (await keys.public_key(caller, "signer", 1)).version.state == "deactivated"
            # A pair asked for as an AES key, or an AES key as a pair: refused, nothing released.
            await keys.create("aes", ["group:web"])
            before = await _releases(store)
            with pytest.raises(WrongKeyType, match="use kms-agent sign/verify --key signer"):
                await keys.fetch(caller, "signer", 0)
            with pytest.raises(WrongKeyType, match="key aes is an aes-256 key, not a key pair"):
                await keys.fetch(caller, "aes", 0, key_pair=True)
            with pytest.raises(WrongKeyType):
                await keys.public_key(caller, "aes", 0)
            assert await _releases(store) == before
            assert (await keys.fetch(caller, "aes", 0)).key_type == "aes-256"  # and AES is unchanged
            # The public key needs the grant; a destroyed version has none to give.
            with pytest.raises(PermissionDenied):
                await keys.public_key(_caller(rsa_key, "db-1", ("db",)), "signer", 0)
            # Each refusal is in the audit trail, as a refused release of another kind is.
            trail = [(r.actor, r.action, r.object, r.outcome) for r in await store.audit_after(0, 1000)]
            web, db = "agent:web-1/abc123", "agent:db-1/abc123"
            assert (web, "key.release", "key:signer", "wrong-type") in trail
            assert (web, "key.release", "key:aes", "wrong-type") in trail
            assert (web, "key.public", "key:aes", "wrong-type") in trail
            assert (db, "key.public", "key:signer", "denied") in trail
            assert not any(action == "key.public" and outcome == "ok" for _, action, _, outcome in trail)
            await keys.destroy("signer", 1)
            with pytest.raises(FailedPrecondition, match="version 1 of key 'signer' was destroyed"):
                await keys.public_key(caller, "signer", 1)
            with pytest.raises(InvalidArgument, match="unknown key type"):
                await keys.create("bad", [], key_type="dsa")
        finally:
            await store.close()

    asyncio.run(body())


def test_a_compromised_current_pair_is_replaced_by_a_new_pair(
    store_at: tuple[str, str], rsa_key: rsa.RSAPrivateKey
) -> None:
    """revoke key on the current version: the replacement is a new key pair of the same type."""

    async def body() -> None:
        store = await open_store_at(*store_at)
        keys = KeyService(store, SEALER, lambda: NOW, publish=lambda event: None)
        try:
            await keys.create("signer", ["agent:web-1"], key_type="rsa-2048", allow_unknown_grantee=True)
            seal = await keys.make_sealer("signer")
            await store.revoke_key_version("signer", 1, "keyCompromise", 0, seal)
            caller = _caller(rsa_key)
            old = await keys.public_key(caller, "signer", 1)
            new = await keys.public_key(caller, "signer", 0)
            assert old.version.state == "compromised" and new.version.version == 2
            assert keypairs.type_of(keypairs.load_public_key(new.der, "rsa-2048")) == "rsa-2048"
            assert new.der != old.der
            with pytest.raises(FailedPrecondition, match="compromised"):
                await keys.fetch(caller, "signer", 1, key_pair=True)
        finally:
            await store.close()

    asyncio.run(body())
