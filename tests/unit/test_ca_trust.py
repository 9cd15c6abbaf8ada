"""Trust in every verified CA generation (issue 19 §1), with real certificates from two generations.

An agent trusts its pinned CA and every CA of its stored, verified trust bundle: for the
server's certificate, peers' and its own renewed one. The server accepts agents of every
generation not retired (server/ca/trust.py), re-read on each 'bundle' event.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.issuance import accept_issued
from agent.state import AgentIdentity, AgentSettings, StateDir
from kms import cabundle
from kms.errors import FailedPrecondition
from kms.handshake import PeerRejected
from kms.peers import AgentPeers, agent_peer, server_peer
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.rotation import CARotation
from server.ca.trust import CATrust
from server.deployment.datadir import KeyPair
from server.deployment.sealing import Sealer
from server.endpoints.authn import PeerAuthenticator
from server.store import RevocationEvent
from tests.unit.server.conftest import open_store_at

NOW = datetime.now(UTC)
TTL = timedelta(days=365)
TD = "seed-kms.local"
SEALER = Sealer(bytes(range(32)))
PEM = serialization.Encoding.PEM


def _authority(pair: KeyPair | None = None) -> CertificateAuthority:
    root = software_root(pair or create_root(TD, None, TTL, NOW))
    return CertificateAuthority(root, TD, timedelta(hours=1), lambda: NOW)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(PEM) for c in certs)


def _chain(cert: x509.Certificate) -> tuple[bytes, ...]:
    return (cert.public_bytes(serialization.Encoding.DER),)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_agent_trusts_the_verified_bundle_s_cas(
    tmp_path: Path, key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = _authority(), _authority()
    old_leaf = asyncio.run(old.issue_agent(key.public_key(), "web-1"))
    new_leaf = asyncio.run(new.issue_agent(key.public_key(), "web-1"))
    settings = AgentSettings.from_json(
        {
            "name": "web-1",
            "groups": [],
            "spiffe_id": f"spiffe://{TD}/agent/web-1",
            "ca_fingerprint": old.fingerprint,
            "servers": ["127.0.0.1:8443"],
            "enroll_servers": ["127.0.0.1:8444"],
        }
    )
    state = StateDir(tmp_path)
    state.save(AgentIdentity(settings, key, old_leaf, old.bundle_pem))
    # No bundle stored: the pinned CA alone; an agent of the new CA is refused.
    identity = state.load()
    assert identity.anchors == (old.certificate,) and identity.roots == [old.certificate]
    with pytest.raises(PeerRejected):
        agent_peer(identity.roots, TD, None, NOW, lambda s: False)(_chain(new_leaf))
    # The bundle, verified through the cross-certificate: both CAs are anchors.
    state.trust_bundle.write_bytes(
        _pem(old.certificate, new.certificate, old.current.cross_certify(new.certificate, NOW))
    )
    identity = state.load()
    assert identity.roots == [old.certificate, new.certificate]
    assert identity.roots_pem == _pem(old.certificate, new.certificate)
    for leaf in (old_leaf, new_leaf):  # a peer of either generation
        assert agent_peer(identity.roots, TD, "web-1", NOW, lambda s: False)(_chain(leaf)).name == "web-1"
    # A renewal issued by the new CA is accepted; so is a server certificate of the new CA.
    assert accept_issued(new_leaf.public_bytes(serialization.Encoding.DER), identity.roots, TD, "web-1", key)
    server = new.issue_server(("127.0.0.1",), timedelta(hours=1))
    assert server_peer(identity.roots, "127.0.0.1", NOW)(_chain(server.cert)).name == "server"
    # A bundle without the cross-certificate: the pinned CA alone again, one line logged.
    state.trust_bundle.write_bytes(_pem(old.certificate, new.certificate))
    with caplog.at_level(logging.WARNING, logger="agent.state"):
        assert state.load().anchors == (old.certificate,)
    assert "trusting only the pinned CA" in caplog.text


def test_server_accepts_every_generation_not_retired(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    pair = create_root(TD, None, TTL, NOW)
    old, replica = _authority(pair), _authority(pair)  # two replicas of one deployment
    published: list[RevocationEvent] = []

    async def body() -> None:
        store = await open_store_at("sqlite", str(tmp_path))
        try:
            here = CATrust(store, old, SEALER)
            rotation = CARotation(store, old, here, SEALER, lambda: NOW, TTL, None, published.append)
            await rotation.adopt()
            trust, heard = CATrust(store, replica, SEALER), []  # the other replica's
            authn = PeerAuthenticator(old.certificate, TD, store, lambda: NOW, lambda s: None)
            peers = AgentPeers([old.certificate], TD, lambda s: False)
            trust.listen(heard.append, authn.trust, peers.trust)
            await trust.refresh()
            assert heard == [[old.certificate]]  # nothing new: listeners not called again
            prepared = await rotation.rotate(None)
            new = _authority(_pair(prepared.certificate, prepared.sealed_key))
            new_leaf = await new.issue_agent(key.public_key(), "web-1")
            with pytest.raises(PeerRejected):
                peers.at(NOW)(_chain(new_leaf))
            # The 'bundle' event (here or from another replica) re-reads the generations.
            (event,) = published
            trust.published(event)
            async with asyncio.timeout(10):
                while len(heard) < 2:
                    await asyncio.sleep(0.01)
            assert heard[-1] == [old.certificate, new.certificate]
            assert peers.at(NOW)(_chain(new_leaf)).name == "web-1"
            assert authn._check(new_leaf.public_bytes(PEM), NOW).name == "web-1"
            # Retired generations are no longer trusted (retiring ones are: retired_at not set yet).
            sql = "UPDATE ca_generations SET state = 'retired', retired_at = 1 WHERE generation = 2"
            await store._change(lambda tx: tx.execute(sql))  # type: ignore[attr-defined]
            await trust.refresh()
            assert heard[-1] == [old.certificate]
            with pytest.raises(PeerRejected):
                peers.at(NOW)(_chain(new_leaf))
        finally:
            await store.close()

    asyncio.run(body())


def _pair(cert_pem: str, sealed: bytes | None) -> KeyPair:
    assert sealed is not None
    key = serialization.load_der_private_key(SEALER.open("ca.key", sealed), password=None)
    return KeyPair(x509.load_pem_x509_certificate(cert_pem.encode()), key)  # type: ignore[arg-type]


def test_activation_switches_the_issuer_and_the_bundle_verifies_from_either_pin(tmp_path: Path) -> None:
    pair = create_root(TD, None, TTL, NOW)
    old, replica = _authority(pair), _authority(pair)  # two replicas of one deployment
    published: list[RevocationEvent] = []
    switched: list[int] = []

    async def body() -> None:
        store = await open_store_at("sqlite", str(tmp_path))
        try:

            async def on_switch() -> None:
                switched.append(old.generation)

            rotation = CARotation(
                store, old, CATrust(store, old, SEALER), SEALER, lambda: NOW, TTL, None,
                published.append, timedelta(hours=1), on_switch,
            )  # fmt: skip
            await rotation.adopt()
            with pytest.raises(FailedPrecondition, match="no CA generation is prepared"):
                await rotation.activate(True)
            first = old.certificate
            prepared = await rotation.rotate(None)
            with pytest.raises(FailedPrecondition, match=r"activate it at .* \(in 1 h: ca-propagation\)"):
                await rotation.activate(False)
            active = await rotation.activate(True)
            assert (active.generation, active.state) == (2, "active") and switched == [2]
            assert old.generation == 2 and old.certificate.public_bytes(PEM).decode() == prepared.certificate
            assert [g.state for g in await rotation.generations()] == ["retiring", "active"]
            assert [(e.kind, e.reason) for e in published] == [("bundle", ""), ("bundle", "activated")]
            assert [r.action for r in await store.audit_after(0, 10)] == ["ca.rotate", "ca.activate"]
            # Agents pinned to either generation verify the whole bundle.
            bundle = cabundle.parse_bundle(await rotation.bundle_pem())
            assert bundle.cas == (old.certificate, first) and len(bundle.crosses) == 2
            for pin in bundle.cas:
                assert len(cabundle.verify_bundle(bundle, pin, NOW)) == 2
            await rotation.follow()  # the event heard again: nothing changes
            assert switched == [2]
            # The other replica switches when it hears the event, in memory.
            trust = CATrust(store, replica, SEALER)
            CARotation(store, replica, trust, SEALER, lambda: NOW, TTL, None, published.append)
            trust.published(published[-1])
            async with asyncio.timeout(10):
                while replica.generation != 2:
                    await asyncio.sleep(0.01)
            assert replica.certificate == old.certificate
        finally:
            await store.close()

    asyncio.run(body())
