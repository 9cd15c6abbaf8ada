"""Regenerates certs/examples/: what a Seed KMS deployment issues, from a throwaway one.

Usage: python scripts/make_example_certs.py [OUT_DIR]   (default: certs/examples)

Starts a kms-server on a temporary data dir (SQLite, ports 0, the HTTP side port on),
enrolls two agents, revokes the second (keyCompromise), and writes the public artifacts:

    ca.crt server.crt agent.crt    the CA, the server's TLS certificate, web-1's certificate (PEM)
    crl.der                        the CRL as /crl serves it, listing web-2
    ocsp-response.der              /ocsp's answer about agent.crt (good)
    example.txt example.txt.sig    a file signed by web-1 (kms-agent sign)
    profile.json                   the profile of each: extensions, key usages, lifetimes, key types

Private keys stay in the temporary directory, which is deleted. profile.json leaves out
what differs from one run to the next (serials, dates, key identifiers, ports), so
tests/test_example_certs.py regenerates the examples and compares profiles: a change to
what is issued shows up as a diff here, to be explained in certs/README.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import ocsp

from kms.v1 import admin_pb2, admin_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "certs" / "examples"
CERTS = ("ca.crt", "server.crt", "agent.crt")
SIGNED = b"A file signed by agent web-1 of a throwaway Seed KMS deployment.\n"
_BIN = Path(sys.executable).parent


def _exe(name: str) -> str:
    path = _BIN / name
    return str(path) if path.exists() else name


def _run(*cmd: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class _Server:
    """A kms-server on a temporary data dir, stopped (SIGTERM) on exit."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "d"
        self._log = (tmp / "server.log").open("w")
        args = ["--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        self._proc = subprocess.Popen(
            [_exe("kms-server"), "run", "--data-dir", str(self.data), *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("KMS_")},
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("kms-server ready "):
            self.__exit__()
            raise RuntimeError(f"kms-server did not start: {(tmp / 'server.log').read_text()}")
        self.fields = dict(part.split("=", 1) for part in line.split()[2:])

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            self._proc.wait(30)
        self._log.close()

    def admin(self) -> Any:
        """The Admin service over the admin socket (fewer processes than kms-server admin commands)."""
        channel = grpc.secure_channel(
            f"unix:{self.fields['admin-socket']}",
            grpc.local_channel_credentials(grpc.LocalConnectionType.UDS),
        )
        return admin_pb2_grpc.AdminStub(channel)

    def enroll(self, name: str, state: Path) -> None:
        request = admin_pb2.CreateJoinTokenRequest(name=name, groups=["web"])
        token = self.admin().CreateJoinToken(request, timeout=10).token
        f = self.fields
        _run(
            _exe("kms-agent"), "enroll", "--dir", str(state), "--server", f["address"],
            "--enroll-server", f["enroll-address"], "--token", token, "--ca-fingerprint", f["ca-fingerprint"],
        )  # fmt: skip

    def http(self, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(  # noqa: S310 - our own server, on loopback
            f"http://{self.fields['http-address']}{path}",
            data=body,
            headers={"Content-Type": "application/ocsp-request"} if body else {},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            data: bytes = answer.read()
            return data


def generate(out: Path) -> None:
    """Writes the examples and their profile.json into out (replacing what is there)."""
    with tempfile.TemporaryDirectory(prefix="kmsx", dir="/tmp") as name:  # short: the admin socket
        tmp = Path(name)
        with _Server(tmp) as server:
            web1, web2 = tmp / "web-1", tmp / "web-2"
            server.enroll("web-1", web1)
            server.enroll("web-2", web2)
            server.admin().RevokeAgent(
                admin_pb2.RevokeAgentRequest(name="web-2", reason="keyCompromise"), timeout=10
            )
            crl = server.http("/crl")
            agent_cert = x509.load_pem_x509_certificate((web1 / "agent.crt").read_bytes())
            ca_cert = x509.load_pem_x509_certificate((server.data / "ca.crt").read_bytes())
            request = ocsp.OCSPRequestBuilder().add_certificate(agent_cert, ca_cert, hashes.SHA256()).build()
            answer = server.http("/ocsp", request.public_bytes(serialization.Encoding.DER))
            (tmp / "example.txt").write_bytes(SIGNED)
            _run(_exe("kms-agent"), "sign", "--dir", str(web1), str(tmp / "example.txt"))
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(server.data / "ca.crt", out / "ca.crt")
        shutil.copyfile(server.data / "server.crt", out / "server.crt")
        shutil.copyfile(web1 / "agent.crt", out / "agent.crt")
        (out / "crl.der").write_bytes(crl)
        (out / "ocsp-response.der").write_bytes(answer)
        shutil.copyfile(tmp / "example.txt", out / "example.txt")
        shutil.copyfile(tmp / "example.txt.sig", out / "example.txt.sig")
    (out / "profile.json").write_text(json.dumps(profile(out), indent=2) + "\n")


# --- the profile: what is issued, without what changes from run to run -------------------


def _key(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"ecdsa-{key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(key).__name__


def _no_port(text: str) -> str:
    return re.sub(r":\d+(/|$)", r":PORT\1", text)


def _value(ext: x509.Extension[Any]) -> Any:
    """An extension's value as far as it is the profile's: flags and names, not key ids or numbers."""
    v = ext.value
    if isinstance(v, x509.BasicConstraints):
        return {"ca": v.ca, "path_length": v.path_length}
    if isinstance(v, x509.KeyUsage):
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment")
        names += ("key_agreement", "key_cert_sign", "crl_sign")
        return sorted(n for n in names if getattr(v, n))
    if isinstance(v, x509.ExtendedKeyUsage):
        return [oid._name for oid in v]
    if isinstance(v, x509.SubjectAlternativeName):
        return [f"{type(n).__name__}:{n.value}" for n in v]
    if isinstance(v, x509.CRLDistributionPoints):
        return [_no_port(n.value) for p in v for n in (p.full_name or [])]
    if isinstance(v, x509.AuthorityInformationAccess):
        return [f"{d.access_method._name}:{_no_port(d.access_location.value)}" for d in v]
    if isinstance(v, x509.NameConstraints):
        return {"permitted": [str(n.value) for n in v.permitted_subtrees or []]}
    if isinstance(v, x509.CRLReason):
        return v.reason.name
    return "present"  # key identifiers, CRL numbers: a value per run


def _extensions(extensions: x509.Extensions) -> list[dict[str, Any]]:
    return [{"name": e.oid._name, "critical": e.critical, "value": _value(e)} for e in extensions]


def _certificate(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "version": cert.version.name,
        "subject": [a.oid._name for a in cert.subject],
        "issuer": [a.oid._name for a in cert.issuer],
        "key": _key(cert.public_key()),
        "signature": cert.signature_algorithm_oid._name,
        "lifetime_seconds": int((cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()),
        "extensions": _extensions(cert.extensions),
    }


def _crl(crl: x509.CertificateRevocationList) -> dict[str, Any]:
    assert crl.next_update_utc is not None
    return {
        "signature": crl.signature_algorithm_oid._name,
        "next_update_after_this_update_seconds": int(
            (crl.next_update_utc - crl.last_update_utc).total_seconds()
        ),
        "extensions": _extensions(crl.extensions),
        "entries": [_extensions(entry.extensions) for entry in crl],
    }


def _ocsp(answer: ocsp.OCSPResponse) -> dict[str, Any]:
    assert answer.next_update_utc is not None
    return {
        "response_status": answer.response_status.name,
        "signature": answer.signature_algorithm_oid._name,
        "responder_id": "by-key-hash" if answer.responder_key_hash else "by-name",
        "certificates_included": len(answer.certificates),
        "certificate_status": answer.certificate_status.name,
        "cert_id_hash": answer.hash_algorithm.name,
        "next_update_after_this_update_seconds": int(
            (answer.next_update_utc - answer.this_update_utc).total_seconds()
        ),
        "extensions": _extensions(answer.extensions),
    }


def _signature(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": document["format"],
        "fields": sorted(document),
        "digest": document["digest"].split(":")[0],
        "signer_chain_length": len(document["signer_chain"]),
    }


def profile(directory: Path) -> dict[str, Any]:
    """The profile of the examples in directory (see the module docstring)."""
    found: dict[str, Any] = {
        name: _certificate(x509.load_pem_x509_certificate((directory / name).read_bytes())) for name in CERTS
    }
    found["crl.der"] = _crl(x509.load_der_x509_crl((directory / "crl.der").read_bytes()))
    found["ocsp-response.der"] = _ocsp(
        ocsp.load_der_ocsp_response((directory / "ocsp-response.der").read_bytes())
    )
    found["example.txt.sig"] = _signature(json.loads((directory / "example.txt.sig").read_text()))
    return found


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLES)
    print(f"wrote {Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLES.relative_to(ROOT)}")
