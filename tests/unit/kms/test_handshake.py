"""kms/handshake.py: the state machines alone — success per group, every tamper, order, identity, revocation."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from kms import profile
from kms.groups import Ephemeral, Group, ffdhe_prime, quadratic_character
from kms.handshake import (
    AuthenticationFailed,
    Finished,
    HandshakeError,
    Hello,
    InitAuth,
    Initiator,
    LocalIdentity,
    Malformed,
    OutOfOrder,
    PeerRejected,
    RespAuth,
    Responder,
    key_schedule,
    session_keys,
)
from kms.peers import agent_peer, server_peer

NOW = datetime.now(UTC).replace(microsecond=0)
TD = "example.org"
VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "handshake.json").read_text())


@dataclasses.dataclass
class Pki:
    ca: x509.Certificate
    server: LocalIdentity
    web1: LocalIdentity
    web2: LocalIdentity


@pytest.fixture(scope="module")
def pki(rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey) -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = profile.ca_builder(ca_key.public_key(), TD, 1 << 70, NOW, timedelta(days=30)).sign(
        ca_key, hashes.SHA256()
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = profile.server_builder(
        srv_key.public_key(), ca, ("localhost", "127.0.0.1"), 1 << 71, NOW, timedelta(days=1)
    )
    ids = {}
    for name, key, serial in (("web-1", rsa_key, 1 << 72), ("web-2", other_rsa_key, 1 << 73)):
        cert = profile.agent_builder(key.public_key(), ca, TD, name, serial, NOW, timedelta(hours=1)).sign(
            ca_key, hashes.SHA256()
        )
        ids[name] = LocalIdentity(key, (cert.public_bytes(Encoding.DER),))
    server = LocalIdentity(srv_key, (srv.sign(ca_key, hashes.SHA256()).public_bytes(Encoding.DER),))
    return Pki(ca, server, ids["web-1"], ids["web-2"])


def _never_revoked(serial: str) -> bool:
    return False


def _pair(
    pki: Pki,
    group: Group = Group.X25519,
    *,
    revoked: frozenset[str] = frozenset(),
    now: datetime = NOW,
    want: str = "web-2",
):  # type: ignore[no-untyped-def]
    i = Initiator(pki.web1, agent_peer([pki.ca], TD, want, now, lambda s: s in revoked), "web-2", group)
    r = Responder(pki.web2, agent_peer([pki.ca], TD, None, now, lambda s: s in revoked), "web-2")
    return i, r


def _run(i: Initiator, r: Responder) -> None:
    init_auth = i.receive(r.receive(i.start()))  # type: ignore[arg-type]
    assert init_auth is not None
    assert i.receive(r.receive(init_auth)) is None


@pytest.mark.parametrize("group", list(Group))
def test_agents_agree_for_each_group(pki: Pki, group: Group) -> None:
    i, r = _pair(pki, group)
    _run(i, r)
    assert i.session and r.session
    assert i.session.key == r.session.key and len(i.session.key) == 32
    assert i.session.session_id == r.session.session_id
    assert (i.session.peer.name, r.session.peer.name) == ("web-2", "web-1")


def test_agent_and_server(pki: Pki) -> None:
    i = Initiator(pki.web1, server_peer([pki.ca], "127.0.0.1", NOW), "server")
    r = Responder(pki.server, agent_peer([pki.ca], TD, None, NOW, _never_revoked), "server")
    _run(i, r)
    assert i.session and r.session and i.session.key == r.session.key


def test_fresh_keys_every_time(pki: Pki) -> None:
    keys = set()
    for _ in range(3):
        i, r = _pair(pki)
        _run(i, r)
        assert i.session
        keys.add(i.session.key)
    assert len(keys) == 3


def _flip(value: object) -> object:
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:] if value else b"\\x01"
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, int):
        return value + 1
    if isinstance(value, tuple):
        return (_flip(value[0]), *value[1:])
    raise TypeError(value)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize(
    "message, field",
    [(m, f) for m in (Hello, RespAuth, InitAuth, Finished) for f in _fields(m)],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_every_single_field_tamper_is_detected(pki: Pki, message: type, field: str) -> None:
    """A relay flips one field of one message: no side may end with a session."""
    i, r = _pair(pki)
    failures = 0

    def relay(m: object) -> object:
        return dataclasses.replace(m, **{field: _flip(getattr(m, field))}) if isinstance(m, message) else m  # type: ignore[call-overload]

    try:
        init_auth = i.receive(relay(r.receive(relay(i.start()))))  # type: ignore[arg-type]
        assert init_auth is not None
        i.receive(relay(r.receive(relay(init_auth))))  # type: ignore[arg-type]
    except HandshakeError:
        failures += 1
    assert failures == 1
    assert i.session is None  # the initiator never accepts an altered exchange
    if message in (Hello, RespAuth, InitAuth):
        assert r.session is None or r.session.key != getattr(i.session, "key", None)


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param("start,start", id="hello-twice"),
        pytest.param("i:finished-first", id="finished-before-respauth"),
        pytest.param("r:initauth-first", id="initauth-before-hello"),
        pytest.param("r:hello-twice", id="responder-hello-twice"),
        pytest.param("i:after-done", id="message-after-done"),
    ],
)
def test_out_of_order_and_repeated_messages(pki: Pki, steps: str) -> None:
    i, r = _pair(pki)
    with pytest.raises(OutOfOrder):
        if steps == "start,start":
            i.start()
            i.start()
        elif steps == "i:finished-first":
            i.start()
            i.receive(Finished(b"x" * 32))
        elif steps == "r:initauth-first":
            r.receive(InitAuth(pki.web1.chain, b"s", b"m"))
        elif steps == "r:hello-twice":
            hello = i.start()
            r.receive(hello)
            r.receive(hello)
        else:
            _run(i, r)
            i.receive(Finished(b"x" * 32))
    # A machine that refused once is dead.
    with pytest.raises(HandshakeError):
        r.receive(i.start() if steps == "r:initauth-first" else Finished(b""))


def test_wrong_peer_identity(pki: Pki) -> None:
    i, r = _pair(pki, want="web-3")  # the initiator asked for web-3 but web-2 answers
    with pytest.raises(PeerRejected):
        i.receive(r.receive(i.start()))
    other = Responder(pki.web2, agent_peer([pki.ca], TD, None, NOW, _never_revoked), "web-9")
    with pytest.raises(PeerRejected):  # the hello names someone else
        other.receive(Initiator(pki.web1, _never, "web-2").start())


def _never(chain: tuple[bytes, ...]):  # type: ignore[no-untyped-def]
    raise AssertionError("not reached")


def test_revoked_peer(pki: Pki) -> None:
    web2_serial = format(x509.load_der_x509_certificate(pki.web2.chain[0]).serial_number, "x")
    web1_serial = format(x509.load_der_x509_certificate(pki.web1.chain[0]).serial_number, "x")
    i, r = _pair(pki, revoked=frozenset({web2_serial}))
    with pytest.raises(PeerRejected, match="revoked"):
        i.receive(r.receive(i.start()))
    i, r = _pair(pki, revoked=frozenset({web1_serial}))
    init_auth = i.receive(r.receive(i.start()))
    with pytest.raises(PeerRejected, match="revoked"):
        r.receive(init_auth)  # type: ignore[arg-type]


def test_expired_certificate(pki: Pki) -> None:
    i, r = _pair(pki, now=NOW + timedelta(hours=2))
    with pytest.raises(PeerRejected):
        i.receive(r.receive(i.start()))


def test_replayed_transcript_is_refused(pki: Pki) -> None:
    i, r = _pair(pki)
    resp = r.receive(i.start())
    i2, _ = _pair(pki)
    i2.start()
    with pytest.raises(AuthenticationFailed):  # signed for another initiator's nonce and share
        i2.receive(resp)


@pytest.mark.parametrize("group", [Group.FFDHE2048, Group.FFDHE3072])
@pytest.mark.parametrize("value", ["0", "1", "p-1", "p"])
def test_invalid_ffdhe_values_are_refused(pki: Pki, group: Group, value: str) -> None:
    p = ffdhe_prime(group)
    y = {"0": 0, "1": 1, "p-1": p - 1, "p": p}[value]
    size = (p.bit_length() + 7) // 8
    i, r = _pair(pki, group)
    hello = i.start()
    with pytest.raises(Malformed):
        r.receive(
            dataclasses.replace(hello, share=y.to_bytes(size + (1 if y >= 2 ** (8 * size) else 0), "big"))
        )


@pytest.mark.parametrize("group", [Group.FFDHE2048, Group.FFDHE3072])
def test_ffdhe_share_outside_the_prime_order_subgroup_is_refused(pki: Pki, group: Group) -> None:
    """p - 2 = -2 is in range but not a quadratic residue (p = 7 mod 8, so 2 is one and -1 is not)."""
    p = ffdhe_prime(group)
    i, r = _pair(pki, group)
    with pytest.raises(Malformed, match="subgroup"):
        r.receive(dataclasses.replace(i.start(), share=(p - 2).to_bytes((p.bit_length() + 7) // 8, "big")))


@pytest.mark.parametrize("group", [Group.FFDHE2048, Group.FFDHE3072])
def test_quadratic_character_is_eulers_criterion(group: Group) -> None:
    """The subgroup check equals RFC 7919's y^q = 1 (mod p), on random values of both kinds."""
    p = ffdhe_prime(group)
    rng = random.Random(7919)
    for _ in range(40):
        y = rng.randrange(2, p - 1)
        euler = pow(y, (p - 1) // 2, p)
        assert quadratic_character(y, p) == (1 if euler == 1 else -1)
    assert quadratic_character(p, p) == 0 and quadratic_character(4, p) == 1


@pytest.mark.parametrize(("group", "exponent_bits"), [(Group.FFDHE2048, 225), (Group.FFDHE3072, 275)])
def test_an_ffdhe_key_has_rfc7919s_short_exponent_and_its_share_is_the_generator_power(
    group: Group, exponent_bits: int
) -> None:
    """generate: an exponent below 2^225 (ffdhe2048) or 2^275 (ffdhe3072), RFC 7919 appendix A's
    lengths, not a short one by mistake; the share is g^x mod p; two keys agree on a secret."""
    p = ffdhe_prime(group)
    keys = [Ephemeral.generate(group) for _ in range(16)]
    exponents = [k._private.private_numbers().x for k in keys]  # type: ignore[union-attr]
    assert all(x < 2**exponent_bits for x in exponents)
    assert max(x.bit_length() for x in exponents) >= exponent_bits - 8  # random, not short
    assert len(set(exponents)) == len(exponents)
    for key, x in zip(keys, exponents, strict=True):
        assert int.from_bytes(key.public_share, "big") == pow(2, x, p)
    assert keys[0].exchange(keys[1].public_share) == keys[1].exchange(keys[0].public_share)
    share = Ephemeral.from_private_value(group, 12345).public_share
    assert int.from_bytes(share, "big") == pow(2, 12345, p)


def test_x25519_low_order_point_is_refused(pki: Pki) -> None:
    i, r = _pair(pki)
    with pytest.raises(Malformed):
        r.receive(dataclasses.replace(i.start(), share=bytes(32)))


def test_key_schedule_known_answers() -> None:
    for v in VECTORS["key_schedule"]:
        shared, ni, nr, th = (bytes.fromhex(v[k]) for k in ("shared", "nonce_i", "nonce_r", "th"))
        keys = key_schedule(shared, ni, nr, th)
        assert (keys.mac_r.hex(), keys.mac_i.hex()) == (v["mac_r"], v["mac_i"])
        key, sid, confirm = session_keys(shared, ni, nr, th)
        assert (key.hex(), sid, confirm.hex()) == (v["session_key"], v["session_id"], v["confirm"])


def test_x25519_rfc7748_vector() -> None:
    """The group code on RFC 7748 §6.1's published Alice/Bob exchange."""
    alice = Ephemeral.from_private_value(
        Group.X25519, bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert alice.public_share.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert (
        alice.exchange(bob_public).hex() == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    )


def test_ffdhe_primes_match_the_rfc7919_formula() -> None:
    def floor_2k_e(k: int) -> int:  # floor(2^k * e) by the series for e, with guard bits
        scale = 1 << (k + 64)
        total, term, n = 0, scale, 0
        while term:
            total += term
            n += 1
            term //= n
        return total >> 64

    for group, bits, x in ((Group.FFDHE2048, 2048, 560316), (Group.FFDHE3072, 3072, 2625351)):
        expected = 2**bits - 2 ** (bits - 64) + (floor_2k_e(bits - 130) + x) * 2**64 - 1
        assert ffdhe_prime(group) == expected


def test_initiator_insists_on_the_responder_it_asked_for(pki: Pki) -> None:
    """Even if a caller's check lets another identity through, the machine refuses it."""
    lenient = agent_peer([pki.ca], TD, None, NOW, _never_revoked)
    i = Initiator(pki.web1, lenient, "web-2")
    r = Responder(pki.web2, lenient, "web-2")
    impostor_responder = Responder(pki.web1, lenient, "web-2")  # web-1's certificate answering for web-2
    with pytest.raises(PeerRejected, match="not 'web-2'"):
        i.receive(impostor_responder.receive(i.start()))
    del r


def test_a_crashing_peer_check_kills_the_machine(pki: Pki) -> None:
    def flaky(chain: tuple[bytes, ...]):  # type: ignore[no-untyped-def]
        raise ConnectionError("revocation service unreachable")

    i = Initiator(pki.web1, flaky, "web-2")
    r = Responder(pki.web2, agent_peer([pki.ca], TD, None, NOW, _never_revoked), "web-2")
    resp = r.receive(i.start())
    with pytest.raises(ConnectionError):
        i.receive(resp)
    with pytest.raises(OutOfOrder):  # the same message again is not a second chance
        i.receive(resp)


def test_agent_peers_cache_keeps_checking_time_and_revocation(pki: Pki) -> None:
    """AgentPeers verifies a chain once, but validity and revocation on every use."""
    from kms.peers import AgentPeers

    revoked: set[str] = set()
    peers = AgentPeers([pki.ca], TD, lambda s: s in revoked)
    chain = pki.web1.chain
    first = peers.at(NOW)(chain)
    assert peers.at(NOW)(chain) == first
    leaf = x509.load_der_x509_certificate(chain[0])
    with pytest.raises(PeerRejected, match="not valid now"):
        peers.at(leaf.not_valid_after_utc)(chain)
    with pytest.raises(PeerRejected, match="not valid now"):
        peers.at(leaf.not_valid_before_utc - timedelta(seconds=1))(chain)
    revoked.add(first.serial)
    with pytest.raises(PeerRejected, match="revoked"):
        peers.at(NOW)(chain)
    with pytest.raises(PeerRejected):  # a server certificate is no agent, cached or not
        peers.at(NOW)(pki.server.chain)
