"""The CA key in a PKCS#11 token (an HSM): found or generated there, and signing there.

The binding is python-pkcs11. One logged-in session is kept while the token
works; PKCS#11 allows one operation at a time per session, so signatures take a
lock. A token that fails at runtime (session lost, token removed) is TokenDown
(UNAVAILABLE, one line naming the token); the next signature opens a new
session and logs in again, reading the PIN again. ECDSA is signed as CKM_ECDSA over a SHA-256/384 digest made here (the
mechanism every token has; SoftHSM2 2.6 has no CKM_ECDSA_SHA256), RSA as
CKM_SHA256_RSA_PKCS.

Every failure at start is one line (HsmError), raised before anything is
written to the data dir; kms-server init generates a missing key only once the
deployment is known to be new (PendingKey).

CA rotation (issue 19 §1) prepares each next CA's key in the same token, under
a label of its own (hsm_generations.py, with this module's login and key
generation); each key is its own ``HsmKey``, so the old and the new CA sign side
by side while both are live.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key

from kms.errors import FailedPrecondition, Unavailable
from server.ca.external import ExternalSigner
from server.ca.keytype import CAKeyType
from server.ca.pkcs11uri import Pkcs11Uri, parse_pkcs11_uri
from server.ca.signer import PublicKey, public_key_type

__all__ = ["HsmError", "HsmKey", "PendingKey", "TokenDown", "open_ca_key", "open_configured", "read_pin"]

PIN_ENV = "KMS_PKCS11_PIN"
# After a failure other than a refused PIN, the token is tried again at most this often.
REOPEN_EVERY = 5.0
_CURVES = {CAKeyType.EC_P256: "secp256r1", CAKeyType.EC_P384: "secp384r1"}
# The PIN each token accepted in this process (a digest), by (module, label, serial): a second
# login to a token is refused as "already logged in" without the PIN being checked.
_LOGINS: dict[tuple[str, str, str | None], bytes] = {}


class HsmError(FailedPrecondition):
    """The token or its key cannot be used; the message says which and how to fix it."""


class PinRefused(HsmError):
    """The token refused the PIN (wrong, or locked): offering it again only brings a lockout nearer."""


class TokenDown(Unavailable):
    """The token failed while the server runs (session lost, token removed): nothing is signed until
    a later signature logs in to it again."""


def read_pin(pin_file: Path | None, env: Mapping[str, str] | None = None) -> str:
    """The user PIN: --pkcs11-pin-file (0600, one line), else KMS_PKCS11_PIN. Never a flag."""
    if pin_file is not None:
        try:
            mode = stat.S_IMODE(os.stat(pin_file).st_mode)
            text = pin_file.read_text()
        except OSError as exc:
            raise HsmError(f"cannot read --pkcs11-pin-file {pin_file}: {exc.strerror}") from None
        if mode & 0o077:
            raise HsmError(
                f"--pkcs11-pin-file {pin_file} is readable by others (mode {mode:04o}): chmod 600 it"
            )
        pin = text.rstrip("\r\n")
    else:
        pin = (os.environ if env is None else env).get(PIN_ENV, "")
    if not pin:
        raise HsmError(f"the token's PIN is missing: give --pkcs11-pin-file FILE (0600) or {PIN_ENV}")
    return pin


class HsmKey(ExternalSigner):
    """The CA's private key in a token: it signs there and never leaves it.

    A token that fails at runtime (the session lost, the token removed) makes signing raise
    TokenDown, one line naming the token; the session is dropped, and the next signature opens
    a new one and logs in again, re-reading the PIN (pin: --pkcs11-pin-file or KMS_PKCS11_PIN).
    """

    def __init__(
        self, uri: Pkcs11Uri, lib: Any, session: Any, private: Any, public: PublicKey, pin: Callable[[], str]
    ) -> None:
        self.uri = uri
        self._lib = lib
        self._session: Any = session
        self._private: Any = private
        self._pin = pin
        self._lock = threading.Lock()
        self._next_try = 0.0  # monotonic: no new login before (after a failure)
        self._refused: bytes | None = None  # digest of a PIN the token refused
        super().__init__(public, self._sign_in_token)

    def __str__(self) -> str:
        return f"the token key {self.uri}"

    def for_new_ca(self, key_type: CAKeyType | None) -> HsmKey:
        """This key, for a new CA that asked for key_type (None: any)."""
        if key_type is not None and key_type is not self.key_type:
            raise HsmError(
                f"{self} is {self.key_type.value}, not --ca-key-type {key_type.value}: "
                "name another key, or leave --ca-key-type out"
            )
        return self

    def existing(self) -> HsmKey:
        return self

    def close(self) -> None:
        """Closes this key's session (the last one closed logs out); a later signature logs in again."""
        with self._lock:
            self._drop()

    def _sign_in_token(self, data: bytes) -> bytes:
        if self.key_type in _CURVES:
            digest = hashes.Hash(hashes.SHA384() if self.key_type is CAKeyType.EC_P384 else hashes.SHA256())
            digest.update(data)
            raw = self._in_token(digest.finalize(), Mechanism.ECDSA)
            half = len(raw) // 2
            return encode_dss_signature(int.from_bytes(raw[:half]), int.from_bytes(raw[half:]))
        return self._in_token(data, Mechanism.SHA256_RSA_PKCS)

    def _in_token(self, data: bytes, mechanism: Mechanism) -> bytes:
        with self._lock:
            if self._private is None:
                self._reopen()
            try:
                return bytes(self._private.sign(data, mechanism=mechanism))
            except pkcs11.PKCS11Error as exc:
                self._drop()
                raise TokenDown(
                    f"the CA key's token {self.uri.token!r} failed ({_reason(exc)}): nothing can be signed "
                    "until it works again (the next signature logs in to it again)"
                ) from None

    def _reopen(self) -> None:
        """A new session, logged in with the PIN read again, and the same key found in it.

        Anyone can make the server sign (an OCSP request), and a real token locks its PIN after
        a few wrong ones: a PIN the token refused is not offered again until the PIN file (or
        KMS_PKCS11_PIN) changes, and after any other failure the token is tried again at most
        every REOPEN_EVERY seconds; in between, signing fails at once.
        """
        if time.monotonic() < self._next_try:
            raise TokenDown(
                f"the CA key's token {self.uri.token!r} is down: it is tried again within {REOPEN_EVERY:.0f} s"
            )
        session = None
        try:
            pin = self._pin()
            if self._refused is not None and hmac.compare_digest(self._refused, _pin_digest(pin)):
                raise TokenDown(
                    f"token {self.uri.token!r} refused the configured PIN: it is not offered again until the PIN"
                    " file (or KMS_PKCS11_PIN) changes"
                )
            session = _login(self._lib, self.uri, pin)
            private = _find(session, self.uri, ObjectClass.PRIVATE_KEY)
            if private is None or _public_key(session, self.uri, private) != self.public_key():
                raise HsmError(f"token {self.uri.token!r} no longer holds the CA key {_named(self.uri)}")
        except PinRefused as exc:
            self._refused = _pin_digest(pin)
            raise TokenDown(f"the CA key's token cannot be used: {exc.message}") from None
        except (HsmError, pkcs11.PKCS11Error) as exc:
            _close(session)
            self._next_try = time.monotonic() + REOPEN_EVERY
            why = exc.message if isinstance(exc, HsmError) else _reason(exc)
            raise TokenDown(f"the CA key's token cannot be used: {why}") from None
        self._session, self._private, self._refused = session, private, None

    def _drop(self) -> None:
        _close(self._session)
        self._session = self._private = None


class PendingKey:
    """--ca-key names a key the token does not hold yet: kms-server init makes it for a new CA only."""

    def __init__(self, uri: Pkcs11Uri, lib: Any, session: Any, pin: Callable[[], str]) -> None:
        self.uri = uri
        self._lib = lib
        self._session = session
        self._pin = pin

    def __str__(self) -> str:
        return f"the token key {self.uri}"

    def for_new_ca(self, key_type: CAKeyType | None) -> HsmKey:
        """Generates the key in the token (the caller checked everything else first)."""
        _generate_key(self._session, self.uri, key_type or CAKeyType.EC_P256)
        return _open_found(self.uri, self._lib, self._session, self._pin)

    def existing(self) -> HsmKey:
        _close(self._session)
        raise _no_key(self.uri)

    def close(self) -> None:
        _close(self._session)


def _close(session: Any) -> None:
    if session is not None:
        with contextlib.suppress(pkcs11.PKCS11Error):  # gone with the token: nothing to close
            session.close()


def _no_key(uri: Pkcs11Uri) -> HsmError:
    return HsmError(
        f"token {uri.token!r} has no private key {_named(uri)}: kms-server init generates it "
        "(with --ca-key-type), or import one under that label"
    )


def open_ca_key(
    uri_text: str, module: Path | None, pin: str | Callable[[], str], *, generate: CAKeyType | None = None
) -> HsmKey:
    """Logs in to the URI's token and finds its private key (or, with generate, makes it there).

    pin is the PIN, or how to read it (again, when the token has to be logged in to again).

    Raises:
        HsmError: the module, token, PIN or key cannot be used (one line each).
    """
    key = _open(uri_text, module, pin, generate=generate, pending=False)
    assert isinstance(key, HsmKey)
    return key


def _open(
    uri_text: str,
    module: Path | None,
    pin: str | Callable[[], str],
    *,
    generate: CAKeyType | None,
    pending: bool,
) -> HsmKey | PendingKey:
    """open_ca_key; with pending, a key the token lacks is a PendingKey, made when init knows the CA is new."""
    uri = parse_pkcs11_uri(uri_text)
    if module is None:
        raise HsmError("--ca-key pkcs11:... needs --pkcs11-module PATH (the token's PKCS#11 library)")
    try:
        lib = pkcs11.lib(str(module))
    except pkcs11.PKCS11Error as exc:
        # python-pkcs11 says "OS exception while loading PATH: PATH: why": the why is enough.
        raise HsmError(
            f"cannot load the PKCS#11 module {module}: {_reason(exc).rsplit(': ', 1)[-1]}"
        ) from None
    read = pin if callable(pin) else (lambda: pin)
    session = _login(lib, uri, read())
    try:
        if _find(session, uri, ObjectClass.PRIVATE_KEY) is None:
            if pending:
                return PendingKey(uri, lib, session, read)
            if generate is None:
                raise _no_key(uri)
            _generate_key(session, uri, generate)
        return _open_found(uri, lib, session, read)
    except BaseException:
        _close(session)
        raise


def _open_found(uri: Pkcs11Uri, lib: Any, session: Any, pin: Callable[[], str]) -> HsmKey:
    private = _find(session, uri, ObjectClass.PRIVATE_KEY)
    if private is None:
        raise _no_key(uri)
    public = _public_key(session, uri, private)
    if public_key_type(public) is None:
        raise HsmError(f"the key {uri} is not ECDSA P-256/P-384 or RSA-3072/4096")
    return HsmKey(uri, lib, session, private, public, pin)


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _named(uri: Pkcs11Uri) -> str:
    return repr(uri.object) if uri.object is not None else f"with id {uri.id!r}"


def _login(lib: Any, uri: Pkcs11Uri, pin: str) -> Any:
    query: dict[str, Any] = {"token_label": uri.token}
    if uri.serial is not None:
        query["token_serial"] = uri.serial.encode()
    try:
        token = lib.get_token(**query)
    except pkcs11.NoSuchToken:
        raise HsmError(f"no PKCS#11 token labelled {uri.token!r} in {lib.so}") from None
    except pkcs11.MultipleTokensReturned:
        raise HsmError(f"several tokens are labelled {uri.token!r}: add serial=... to --ca-key") from None
    logged_in = (str(lib.so), uri.token, uri.serial)
    try:
        session = token.open(user_pin=pin, rw=True)
    except pkcs11.UserAlreadyLoggedIn:  # PKCS#11 logins are per process: this one is in already
        # ...so the token does not check this PIN: compare it with the one it accepted.
        accepted = _LOGINS.get(logged_in)
        if accepted is None or not hmac.compare_digest(accepted, _pin_digest(pin)):
            raise PinRefused(f"wrong PIN for token {uri.token!r}") from None
        return token.open(rw=True)
    except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
        raise PinRefused(f"wrong PIN for token {uri.token!r}") from None
    except pkcs11.PinLocked:
        raise PinRefused(
            f"the PIN of token {uri.token!r} is locked: reset it with the token's tools"
        ) from None
    except pkcs11.PKCS11Error as exc:
        raise HsmError(f"cannot log in to token {uri.token!r}: {_reason(exc)}") from None
    _LOGINS[logged_in] = _pin_digest(pin)
    return session


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(b"kms-pkcs11-pin\0" + pin.encode()).digest()


def _find(session: Any, uri: Pkcs11Uri, kind: ObjectClass) -> Any:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: kind}
    if uri.object is not None:
        attrs[Attribute.LABEL] = uri.object
    if uri.id is not None:
        attrs[Attribute.ID] = uri.id
    found = list(session.get_objects(attrs))
    if len(found) > 1:
        raise HsmError(f"token {uri.token!r} holds several keys {_named(uri)}: name one with id=...")
    return found[0] if found else None


def _public_key(session: Any, uri: Pkcs11Uri, private: Any) -> PublicKey:
    """The public half: the token's public key object with the same label and id."""
    query = Pkcs11Uri(uri.token, private[Attribute.LABEL] or None, private[Attribute.ID] or None)
    public = _find(session, query if query.object or query.id else uri, ObjectClass.PUBLIC_KEY)
    if public is None:
        raise HsmError(f"token {uri.token!r} has the private key {_named(uri)} but not its public key")
    der = encode_ec_public_key(public) if private.key_type == KeyType.EC else encode_rsa_public_key(public)
    key = serialization.load_der_public_key(der)
    if not isinstance(key, PublicKey):
        raise HsmError(f"the key {uri} is not ECDSA or RSA")
    return key


def _generate_key(session: Any, uri: Pkcs11Uri, key_type: CAKeyType) -> Any:
    """A new, non-extractable key pair in the token, under the URI's label and id: (public, private)."""
    names: dict[str, Any] = {"store": True, "label": uri.object or "kms-ca", "id": uri.id or b"kms-ca"}
    private = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True}
    try:
        if key_type in _CURVES:
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[key_type])},
                local=True,
            )
            return params.generate_keypair(private_template=private, **names)
        else:
            bits = 3072 if key_type is CAKeyType.RSA_3072 else 4096
            return session.generate_keypair(KeyType.RSA, bits, private_template=private, **names)
    except pkcs11.PKCS11Error as exc:
        raise HsmError(
            f"cannot generate a {key_type.value} key in token {uri.token!r}: {_reason(exc)}"
        ) from None


def open_configured(
    ca_key: str | None, module: Path | None, pin_file: Path | None, *, pending: bool
) -> HsmKey | PendingKey | None:
    """The token key that --ca-key names (None without it), opened before the data dir is touched.

    With pending (kms-server init), a key the token lacks is made only once the deployment is
    known to be new (PendingKey.for_new_ca), so an init that refuses leaves no stray key behind.
    """
    if ca_key is None:
        return None
    return _open(ca_key, module, lambda: read_pin(pin_file), generate=None, pending=pending)
