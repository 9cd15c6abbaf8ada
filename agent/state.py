"""The agent's state directory (0700).

agent.key    the RSA private key, PEM PKCS#8, 0600; never leaves the machine
agent.crt    the agent certificate, PEM
ca.crt       the CA pinned at enrollment (the one --ca-fingerprint names), PEM
trust-bundle.pem  the latest CA trust bundle this agent verified (agent/bundle.py), 0644, its version
             the first line (agent/bundlefile.py): its CAs, and only they, are what the agent trusts
             (the pinned CA too only while in it); without it (or it no longer verifies), the pinned CA
dropped-cas.json  every CA this agent stopped trusting (a newer bundle left it out, or its own
             certificate was revoked for cACompromise): never trusted again (agent/bundle.py), 0644
agent.json   name, groups, server and enrollment addresses (lists), CA fingerprint
watch.json   the last revocation sequence number kms-agent watch processed
enroll-pending.json  the key (0600) an unfinished enrollment sent a CSR for, with the token's id: a
             retry with the same token reuses it and gets the certificate already issued; removed by enroll
revoked.json this agent's certificate serial and reason, once the watch feed or the server said it
             was revoked (kms-agent sign reads it when no server answers); removed by enroll
key-files.json  key files fetch-key --out wrote (with their format, and whether they follow the
                current version); deleted if their version is compromised, refreshed by
                kms-agent run when the key rotates
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.bundlefile import read_versioned, versioned
from agent.issuance import own_key
from agent.keyfile import KeyFile
from kms.cabundle import BundleError, parse_bundle, verify_stored
from kms.errors import FailedPrecondition
from kms.identity import fingerprint
from kms.securefile import ensure_private_dir, write_atomic

__all__ = ["AgentIdentity", "AgentSettings", "KeyFile", "StateDir", "default_state_dir"]

logger = logging.getLogger(__name__)


def _fp(cert: x509.Certificate) -> str:
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def default_state_dir() -> Path:
    if os.environ.get("KMS_AGENT_DIR"):
        return Path(os.environ["KMS_AGENT_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kms-agent"


@dataclass(frozen=True)
class AgentSettings:
    """What agent.json holds.

    Format: name, groups, spiffe_id, ca_fingerprint, and the deployment's
    addresses as lists -- ``servers`` (mTLS API, in order of preference) and
    ``enroll_servers``. Agents before failover wrote one ``server`` and one
    ``enroll_server`` string; those files are still read. A file holding both
    forms (an old-style ``server`` written over a new file, by hand or by an
    older tool) means that one address: the old key wins.
    """

    name: str
    groups: list[str]
    spiffe_id: str
    servers: tuple[str, ...]
    enroll_servers: tuple[str, ...]
    ca_fingerprint: str

    @property
    def server(self) -> str:
        """The first (preferred) server address."""
        return self.servers[0]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "groups": list(self.groups),
            "spiffe_id": self.spiffe_id,
            "servers": list(self.servers),
            "enroll_servers": list(self.enroll_servers),
            "ca_fingerprint": self.ca_fingerprint,
        }

    @classmethod
    def from_json(cls, doc: object) -> AgentSettings:
        """Reads either format. Raises ValueError naming what is missing or malformed."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        unknown = set(doc) - {"name", "groups", "spiffe_id", "ca_fingerprint", *_ADDRESS_KEYS}
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
        groups = doc.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ValueError("groups must be a list of names")
        return cls(
            name=_text(doc, "name"),
            groups=list(groups),
            spiffe_id=_text(doc, "spiffe_id"),
            servers=_addresses(doc, "servers", "server"),
            enroll_servers=_addresses(doc, "enroll_servers", "enroll_server"),
            ca_fingerprint=_text(doc, "ca_fingerprint"),
        )


_ADDRESS_KEYS = ("servers", "server", "enroll_servers", "enroll_server")


def _text(doc: dict[str, object], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is missing")
    return value


def _addresses(doc: dict[str, object], key: str, old_key: str) -> tuple[str, ...]:
    if old_key in doc:  # the format before failover: one address
        return (_text(doc, old_key),)
    value = doc.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise ValueError(f"{key} must be a non-empty list of HOST:PORT")
    return tuple(value)


@dataclass(frozen=True)
class AgentIdentity:
    settings: AgentSettings
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    ca_bundle_pem: bytes  # ca.crt: the CA pinned at enrollment
    # The CAs of the latest verified trust bundle (issue 19 §1, SPIRE's model): the trust anchors
    # for the server's certificate, peers' and this agent's own renewed ones, in place of the
    # pinned CA. Empty: no bundle stored (or it no longer verifies), the pinned CA alone.
    anchors: tuple[x509.Certificate, ...] = ()

    @property
    def roots(self) -> list[x509.Certificate]:
        """Every CA this agent trusts: the trust bundle's, else the pinned one."""
        return list(self.anchors) or x509.load_pem_x509_certificates(self.ca_bundle_pem)

    @property
    def roots_pem(self) -> bytes:
        """roots as PEM (a gRPC channel's root certificates)."""
        pem = serialization.Encoding.PEM
        return b"".join(a.public_bytes(pem) for a in self.anchors) or self.ca_bundle_pem

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.key = path / "agent.key"
        self.cert = path / "agent.crt"
        self.ca = path / "ca.crt"
        self.trust_bundle = path / "trust-bundle.pem"
        self.settings = path / "agent.json"
        self.watch = path / "watch.json"
        self.revoked_file = path / "revoked.json"
        self.pending = path / "enroll-pending.json"
        self.key_files = path / "key-files.json"
        self.dropped_file = path / "dropped-cas.json"

    @property
    def enrolled(self) -> bool:
        return self.settings.exists()

    def save(
        self,
        identity: AgentIdentity,
        *,
        watch_from_seq: int | None = None,
        trust_bundle: tuple[bytes, int] | None = None,
    ) -> None:
        """Writes the identity; agent.json last, so a crash leaves 'not enrolled'.

        watch_from_seq (a new enrollment): where watching starts, replacing any
        position a previous identity in this directory had reached.
        trust_bundle (a new enrollment): the trust bundle verified from the pinned CA and its version,
        replacing any stored one; a CA of it dropped before is trusted again (the operator's new pin
        decides). A renewal passes none: the stored bundle may be newer than its identity's.
        """
        ensure_private_dir(self.path)
        self.revoked_file.unlink(missing_ok=True)  # about an earlier certificate
        self.pending.unlink(missing_ok=True)  # this enrollment is done
        write_atomic(self.key, identity.key_pem, mode=0o600)
        write_atomic(self.cert, identity.cert_pem, mode=0o644)
        write_atomic(self.ca, identity.ca_bundle_pem, mode=0o644)
        if trust_bundle is not None:
            self.forget_dropped(x509.load_pem_x509_certificates(trust_bundle[0]))
            self.save_trust_bundle(*trust_bundle)
        if watch_from_seq is not None:
            self.save_last_seq(watch_from_seq)
        write_atomic(
            self.settings, (json.dumps(identity.settings.to_json(), indent=2) + "\n").encode(), mode=0o644
        )

    def load(self) -> AgentIdentity:
        """Reads the identity. Raises FailedPrecondition when not enrolled or unreadable."""
        if not self.enrolled:
            raise FailedPrecondition(
                f"this agent is not enrolled (no {self.settings}): run kms-agent enroll first"
            )
        try:
            settings = AgentSettings.from_json(json.loads(self.settings.read_text()))
            key = own_key(self.key.read_bytes())
            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
            ca = self.ca.read_bytes()
            trust = self.trust(datetime.now(UTC))
        except (OSError, ValueError, TypeError) as exc:
            raise FailedPrecondition(
                f"agent state in {self.path} is unreadable ({exc}): enroll again with --force"
            ) from exc
        if not isinstance(key, rsa.RSAPrivateKey) or key.public_key() != cert.public_key():
            raise FailedPrecondition(f"{self.key} does not match {self.cert}: enroll again with --force")
        if not trust:
            raise FailedPrecondition(
                f"this agent trusts no CA it can use (each one it knows was dropped, see {self.dropped_file}):"
                f" ask for a new join token (kms-server token create --name {settings.name}) and run"
                " kms-agent enroll --force"
            )
        return AgentIdentity(settings, key, cert, ca, trust)

    def trust(self, now: datetime) -> tuple[x509.Certificate, ...]:
        """What this agent trusts at now: the stored trust bundle's CAs, else (none stored, or it
        does not verify) the pinned one; never a dropped CA. Empty: nothing it can use.
        Raises OSError, ValueError (ca.crt unreadable) or FailedPrecondition (dropped-cas.json)."""
        dropped = self.dropped()
        stored = self.anchors(now)
        cas = stored or tuple(x509.load_pem_x509_certificates(self.ca.read_bytes()))
        return tuple(c for c in cas if _fp(c) not in dropped)

    def anchors(self, now: datetime) -> tuple[x509.Certificate, ...]:
        """The stored trust bundle's CAs valid at now, when it still verifies as one family (every
        CA reached from one of them through valid cross-certificates: kms.cabundle.verify_stored);
        none when no bundle is stored, or it does not verify (one line logged): the pinned CA then."""
        try:
            trusted = verify_stored(parse_bundle(self.trust_bundle.read_bytes()), now)
        except FileNotFoundError:
            return ()
        except (BundleError, OSError, ValueError) as exc:
            logger.warning("trusting only the pinned CA: %s does not verify (%s)", self.trust_bundle, exc)
            return ()
        return tuple(t.cert for t in trusted)

    def dropped(self) -> dict[str, x509.Certificate]:
        """Every CA this agent dropped, by fingerprint. Raises FailedPrecondition when unreadable."""
        try:
            doc = json.loads(self.dropped_file.read_text())
            certs = [x509.load_pem_x509_certificate(str(e).encode()) for e in doc["dropped"]]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(
                f"{self.dropped_file} is unreadable ({exc}): enroll again with --force"
            ) from exc
        return {_fp(c): c for c in certs}

    def save_dropped(self, cas: list[x509.Certificate]) -> None:
        """Adds cas to the dropped CAs: atomically, 0644 (certificates only)."""
        self._write_dropped([*self.dropped().values(), *cas])

    def forget_dropped(self, cas: list[x509.Certificate]) -> None:
        """Trusts cas again (a new enrollment verified them from the operator's pin)."""
        dropped = self.dropped()
        keep = [c for c in dropped.values() if c not in cas]
        if len(keep) < len(dropped):
            self._write_dropped(keep)

    def _write_dropped(self, cas: list[x509.Certificate]) -> None:
        unique = {_fp(c): c for c in cas}
        pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in unique.values()]
        write_atomic(self.dropped_file, json.dumps({"dropped": pems}, indent=2).encode() + b"\n", mode=0o644)

    def save_trust_bundle(self, pem: bytes, version: int) -> None:
        """Stores a verified trust bundle with its version: atomically, 0644 (certificates only)."""
        write_atomic(self.trust_bundle, versioned(pem, version), mode=0o644)

    def stored_bundle(self) -> tuple[str, int]:
        """The stored trust bundle and its version (("", 0): none). Raises OSError, ValueError."""
        return read_versioned(self.trust_bundle)

    def load_certificate(self) -> x509.Certificate:
        """The current certificate alone: cheap enough per event (parsing the RSA key costs ~0.1 s).

        Raises FailedPrecondition when it is unreadable.
        """
        try:
            return x509.load_pem_x509_certificate(self.cert.read_bytes())
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"{self.cert} is unreadable ({exc}): enroll again with --force") from exc

    # --- watch position and key files -------------------------------------------

    def last_seq(self) -> int:
        try:
            return int(json.loads(self.watch.read_text())["last_seq"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(
                f"{self.watch} is unreadable ({exc}): remove it to replay every event"
            ) from exc

    def save_last_seq(self, seq: int) -> None:
        write_atomic(self.watch, json.dumps({"last_seq": seq}).encode() + b"\n", mode=0o600)

    def save_pending_key(self, token_id: str, key: rsa.RSAPrivateKey) -> None:
        """Keeps the key of an enrollment about to send its token, until the enrollment is saved."""
        ensure_private_dir(self.path)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        write_atomic(self.pending, json.dumps({"token_id": token_id, "key_pem": pem}).encode(), mode=0o600)

    def pending_key(self, token_id: str) -> rsa.RSAPrivateKey | None:
        """The key an unfinished enrollment with this token sent, if any (else None)."""
        try:
            doc = json.loads(self.pending.read_text())
            if not isinstance(doc, dict) or doc.get("token_id") != token_id:
                return None
            key = own_key(str(doc["key_pem"]).encode())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unusable: a new key it is (the token then works only if it was never spent)
        return key if isinstance(key, rsa.RSAPrivateKey) else None

    def save_revoked(self, serial: str, reason: str) -> None:
        """Remembers that this agent's certificate serial was revoked (for checks made offline)."""
        doc = {"serial": serial, "reason": reason or "unspecified"}
        write_atomic(self.revoked_file, json.dumps(doc).encode() + b"\n", mode=0o600)

    def revoked(self, serial: str) -> str | None:
        """The reason certificate serial was revoked, if this agent heard it; else None."""
        try:
            doc = json.loads(self.revoked_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"{self.revoked_file} is unreadable ({exc}): remove it") from exc
        if not isinstance(doc, dict) or doc.get("serial") != serial:
            return None
        return str(doc.get("reason") or "unspecified")

    def _key_files(self) -> list[KeyFile]:
        try:
            entries = json.loads(self.key_files.read_text())
            return [KeyFile.parse(e) for e in entries if isinstance(e, dict)]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(f"{self.key_files} is unreadable ({exc}): remove it") from exc

    def _save_key_files(self, files: list[KeyFile]) -> None:
        data = json.dumps([f.entry() for f in files], indent=2).encode() + b"\n"
        write_atomic(self.key_files, data, mode=0o600)

    def remember_key_file(self, file: KeyFile) -> None:
        file = KeyFile(file.name, file.version, file.path.resolve(), file.format, file.follows_current)
        self._save_key_files([f for f in self._key_files() if f.path != file.path] + [file])

    def forget_key_files(self, name: str, version: int) -> list[KeyFile]:
        """Deletes the key files written for (name, version); returns them."""
        keep, deleted = [], []
        for file in self._key_files():
            if file.name == name and file.version == version:
                # Only a regular file (or a link to one): never a device or FIFO put there since.
                if file.path.is_file():
                    file.path.unlink(missing_ok=True)
                deleted.append(file)
            else:
                keep.append(file)
        if deleted:
            self._save_key_files(keep)
        return deleted

    def key_files_behind(self, name: str, version: int) -> list[KeyFile]:
        """The key files that follow key name's current version but hold one older than version."""
        return [f for f in self._key_files() if f.name == name and f.follows_current and f.version < version]
