"""The authenticated key exchange: SIGMA-I over ephemeral Diffie-Hellman, as two state machines.

Four messages, always in this order::

    1. Hello     I -> R   version, group, nonce_i, share_i, wanted responder
    2. RespAuth  R -> I   nonce_r, share_r, responder chain, sig_r, mac_r
    3. InitAuth  I -> R   initiator chain, sig_i, mac_i
    4. Finished  R -> I   confirm (key confirmation)

Each side signs the transcript hash so far with its certificate key and MACs
it under a key derived from the shared secret (binding its identity to the
exchange); the session key comes from HKDF-SHA256 over the shared secret
with the final transcript hash. A relay that changes any byte changes the
transcript, so a signature, a MAC or the confirmation fails on both ends.

Threat model: the relay cannot read or alter an exchange between agents, but
the server is also the CA, so it could issue itself a certificate under a
peer's name and run two exchanges instead of relaying one. Both ends then
hold different session ids: comparing the id out of band (both CLIs print
it) detects that; pinning the peer's certificate would prevent it.

Ordering rules: ``Initiator.start`` once, then ``receive`` RespAuth, then
Finished. ``Responder.receive`` Hello, then InitAuth. Anything else — a
repeated, out-of-order or post-completion message — raises OutOfOrder and
the machine is dead (every later call raises too). A peer whose chain,
revocation status, validity or identity is wrong raises PeerRejected.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.errors import FailedPrecondition, InvalidArgument, KmsError, Unauthenticated
from kms.groups import Ephemeral, Group, InvalidShare
from kms.signing import PrivateKey, PublicKey, SignatureInvalid, sign, verify

__all__ = [
    "AuthenticationFailed",
    "Finished",
    "HandshakeError",
    "Hello",
    "InitAuth",
    "Initiator",
    "KeySchedule",
    "LocalIdentity",
    "Malformed",
    "OutOfOrder",
    "PeerInfo",
    "PeerRejected",
    "RespAuth",
    "Responder",
    "Session",
    "key_schedule",
]

VERSION = 1
NONCE_BYTES = 32
MAX_CHAIN = 4
MAX_CERT = 8192
_CTX = b"seed-kms handshake v1"


class HandshakeError(KmsError):
    """Base of every handshake failure."""


class OutOfOrder(HandshakeError, FailedPrecondition):
    pass


class Malformed(HandshakeError, InvalidArgument):
    pass


class PeerRejected(HandshakeError, Unauthenticated):
    """The peer's certificate chain, validity, revocation status or identity is not acceptable."""


class AuthenticationFailed(HandshakeError, Unauthenticated):
    """A signature, MAC or the key confirmation did not verify: the exchange was altered."""


# --- messages ------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    version: int
    group: str
    nonce: bytes
    share: bytes
    responder: str  # "server", or the agent name the initiator wants


@dataclass(frozen=True)
class RespAuth:
    nonce: bytes
    share: bytes
    chain: tuple[bytes, ...]
    signature: bytes
    mac: bytes


@dataclass(frozen=True)
class InitAuth:
    chain: tuple[bytes, ...]
    signature: bytes
    mac: bytes


@dataclass(frozen=True)
class Finished:
    confirm: bytes


Message = Hello | RespAuth | InitAuth | Finished


def _enc(*fields: bytes | str | int | Sequence[bytes]) -> bytes:
    """Canonical encoding: each field length-prefixed (lists as a count then items)."""
    out = bytearray()
    for f in fields:
        if isinstance(f, int):
            out += struct.pack(">Q", f)
        elif isinstance(f, str | bytes):
            data = f.encode() if isinstance(f, str) else f
            out += struct.pack(">I", len(data)) + data
        else:
            out += struct.pack(">I", len(f))
            for item in f:
                out += struct.pack(">I", len(item)) + item
    return bytes(out)


def _h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


# --- key schedule ----------------------------------------------------------------


@dataclass(frozen=True)
class KeySchedule:
    mac_r: bytes
    mac_i: bytes


def _derive(shared: bytes, salt: bytes, label: str, th: bytes, length: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, _CTX + b" " + label.encode() + b"\x00" + th).derive(shared)


def key_schedule(shared: bytes, nonce_i: bytes, nonce_r: bytes, th1: bytes) -> KeySchedule:
    """MAC keys after message 2 (pinned by known-answer tests)."""
    salt = nonce_i + nonce_r
    return KeySchedule(
        _derive(shared, salt, "responder mac", th1), _derive(shared, salt, "initiator mac", th1)
    )


def session_keys(shared: bytes, nonce_i: bytes, nonce_r: bytes, th3: bytes) -> tuple[bytes, str, bytes]:
    """(session key, session id, confirmation key) from the final transcript hash."""
    salt = nonce_i + nonce_r
    return (
        _derive(shared, salt, "session key", th3),
        _derive(shared, salt, "session id", th3, 16).hex(),
        _derive(shared, salt, "confirm", th3),
    )


def _mac(key: bytes, label: bytes, th: bytes) -> bytes:
    return hmac.new(key, label + b"\x00" + th, hashlib.sha256).digest()


# --- parties ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalIdentity:
    key: PrivateKey
    chain: tuple[bytes, ...]  # DER, leaf first


@dataclass(frozen=True)
class PeerInfo:
    name: str  # agent name, or "server"
    serial: str
    public_key: PublicKey


# Checks a peer chain (trust, validity now, revocation, expected identity); raises PeerRejected.
PeerCheck = Callable[[tuple[bytes, ...]], PeerInfo]


@dataclass(frozen=True)
class Session:
    key: bytes
    session_id: str
    peer: PeerInfo

    def __repr__(self) -> str:  # never show the key
        return f"Session(id={self.session_id}, peer={self.peer.name})"


def _check_chain_shape(chain: tuple[bytes, ...]) -> None:
    if not 1 <= len(chain) <= MAX_CHAIN or any(not 0 < len(c) <= MAX_CERT for c in chain):
        raise Malformed("certificate chain is empty, too long or has oversized certificates")


class _Machine:
    def __init__(self) -> None:
        self._state = "start"

    def _expect(self, state: str, got: str) -> None:
        if self._state != state:
            current, self._state = self._state, "dead"
            raise OutOfOrder(f"handshake message {got} is not allowed now (state {current})")

    def _fail(self) -> None:
        self._state = "dead"
        self.session = None

    session: Session | None


class Initiator(_Machine):
    def __init__(
        self,
        identity: LocalIdentity,
        check_peer: PeerCheck,
        responder: str,
        group: Group = Group.X25519,
        *,
        nonce: bytes | None = None,
        ephemeral: Ephemeral | None = None,
    ) -> None:
        super().__init__()
        self._identity = identity
        self._check_peer = check_peer
        self._responder = responder
        self._group = group
        self._nonce = nonce or secrets.token_bytes(NONCE_BYTES)
        self._eph = ephemeral or Ephemeral.generate(group)
        self.session: Session | None = None

    def start(self) -> Hello:
        self._expect("start", "Hello")
        self._hello = Hello(VERSION, self._group.value, self._nonce, self._eph.public_share, self._responder)
        self._state = "sent_hello"
        return self._hello

    def receive(self, message: Message) -> InitAuth | None:
        """RespAuth -> InitAuth to send; Finished -> None, with ``session`` set."""
        try:
            if isinstance(message, RespAuth):
                self._expect("sent_hello", "RespAuth")
                return self._on_resp_auth(message)
            if isinstance(message, Finished):
                self._expect("sent_auth", "Finished")
                self._on_finished(message)
                return None
            self._expect("never", type(message).__name__)
            raise AssertionError("unreachable")
        except BaseException:  # any failure, even in a caller's peer check, ends the machine
            self._fail()
            raise

    def _on_resp_auth(self, m: RespAuth) -> InitAuth:
        if len(m.nonce) != NONCE_BYTES:
            raise Malformed("responder nonce must be 32 bytes")
        _check_chain_shape(m.chain)
        try:
            self._shared = self._eph.exchange(m.share)
        except InvalidShare as exc:
            raise Malformed(f"responder key share rejected: {exc}") from None
        peer = self._check_peer(m.chain)
        if peer.name != self._responder:  # whatever the caller's check did, the peer must be who we asked for
            raise PeerRejected(f"the responder is {peer.name!r}, not {self._responder!r}")
        th1 = _h(_enc(*_hello_fields(self._hello)), _enc(m.nonce, m.share, m.chain))
        keys = key_schedule(self._shared, self._nonce, m.nonce, th1)
        try:
            verify(peer.public_key, m.signature, _CTX + b" responder", th1)
        except SignatureInvalid:
            raise AuthenticationFailed(
                "the responder's signature over the exchange does not verify"
            ) from None
        if not hmac.compare_digest(m.mac, _mac(keys.mac_r, b"responder", th1)):
            raise AuthenticationFailed("the responder's MAC does not verify")
        th2 = _h(th1, _enc(m.signature, m.mac), _enc(self._identity.chain))
        sig = sign(self._identity.key, _CTX + b" initiator", th2)
        mac = _mac(keys.mac_i, b"initiator", th2)
        self._th3 = _h(th2, _enc(sig, mac))
        self._nonce_r = m.nonce
        self._peer = peer
        self._state = "sent_auth"
        return InitAuth(self._identity.chain, sig, mac)

    def _on_finished(self, m: Finished) -> None:
        key, session_id, confirm_key = session_keys(self._shared, self._nonce, self._nonce_r, self._th3)
        if not hmac.compare_digest(m.confirm, _mac(confirm_key, b"finished", self._th3)):
            raise AuthenticationFailed("key confirmation failed: the exchange was altered")
        self.session = Session(key, session_id, self._peer)
        self._state = "done"


def _hello_fields(h: Hello) -> tuple[int, str, bytes, bytes, str]:
    return (h.version, h.group, h.nonce, h.share, h.responder)


class Responder(_Machine):
    def __init__(
        self,
        identity: LocalIdentity,
        check_peer: PeerCheck,
        name: str,
        *,
        groups: frozenset[Group] = frozenset(Group),
        nonce: bytes | None = None,
        ephemeral_factory: Callable[[Group], Ephemeral] = Ephemeral.generate,
    ) -> None:
        super().__init__()
        self._identity = identity
        self._check_peer = check_peer
        self._name = name
        self._groups = groups
        self._nonce = nonce or secrets.token_bytes(NONCE_BYTES)
        self._ephemeral_factory = ephemeral_factory
        self.session: Session | None = None

    def receive(self, message: Message) -> RespAuth | Finished:
        try:
            if isinstance(message, Hello):
                self._expect("start", "Hello")
                return self._on_hello(message)
            if isinstance(message, InitAuth):
                self._expect("sent_auth", "InitAuth")
                return self._on_init_auth(message)
            self._expect("never", type(message).__name__)
            raise AssertionError("unreachable")
        except BaseException:  # any failure, even in a caller's peer check, ends the machine
            self._fail()
            raise

    def _on_hello(self, m: Hello) -> RespAuth:
        if m.version != VERSION:
            raise Malformed(f"handshake version {m.version} is not supported (this side speaks {VERSION})")
        try:
            group = Group(m.group)
        except ValueError:
            raise Malformed(f"group {m.group!r} is not one of x25519, ffdhe2048, ffdhe3072") from None
        if group not in self._groups:
            raise Malformed(f"group {m.group} is not accepted here")
        if len(m.nonce) != NONCE_BYTES:
            raise Malformed("initiator nonce must be 32 bytes")
        if m.responder != self._name:
            raise PeerRejected(f"this exchange is for {m.responder!r}, not {self._name!r}")
        eph = self._ephemeral_factory(group)
        try:
            self._shared = eph.exchange(m.share)
        except InvalidShare as exc:
            raise Malformed(f"initiator key share rejected: {exc}") from None
        th1 = _h(_enc(*_hello_fields(m)), _enc(self._nonce, eph.public_share, self._identity.chain))
        self._keys = key_schedule(self._shared, m.nonce, self._nonce, th1)
        sig = sign(self._identity.key, _CTX + b" responder", th1)
        mac = _mac(self._keys.mac_r, b"responder", th1)
        self._th1, self._sig_r, self._mac_r, self._nonce_i = th1, sig, mac, m.nonce
        self._state = "sent_auth"
        return RespAuth(self._nonce, eph.public_share, self._identity.chain, sig, mac)

    def _on_init_auth(self, m: InitAuth) -> Finished:
        _check_chain_shape(m.chain)
        peer = self._check_peer(m.chain)
        th2 = _h(self._th1, _enc(self._sig_r, self._mac_r), _enc(m.chain))
        try:
            verify(peer.public_key, m.signature, _CTX + b" initiator", th2)
        except SignatureInvalid:
            raise AuthenticationFailed(
                "the initiator's signature over the exchange does not verify"
            ) from None
        if not hmac.compare_digest(m.mac, _mac(self._keys.mac_i, b"initiator", th2)):
            raise AuthenticationFailed("the initiator's MAC does not verify")
        th3 = _h(th2, _enc(m.signature, m.mac))
        key, session_id, confirm_key = session_keys(self._shared, self._nonce_i, self._nonce, th3)
        self.session = Session(key, session_id, peer)
        self._state = "done"
        return Finished(_mac(confirm_key, b"finished", th3))
