"""A CA activation with two replicas on one PostgreSQL (issue 19 §1): A activates, B switches on
the 'bundle' event without a restart: B's mTLS port serves a certificate from the new CA, and
both serve the same trust bundle (the oldWithNew cross-certificate is made once, in the store)."""

from __future__ import annotations

import json

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kms.cabundle import parse_bundle
from kms.identity import fingerprint
from kms.v1 import enrollment_pb2, enrollment_pb2_grpc
from tests.e2e.replicas import replicas, wait_until
from tests.e2e.test_ca_rotation import _served
from tests.harness import ServerProcess, enroll

pytestmark = pytest.mark.postgresql_only("replicas share one PostgreSQL database")

PEM = Encoding.PEM


def _bundle(server: ServerProcess, roots: bytes) -> str:
    return _versioned(server, roots)[0]


def _versioned(server: ServerProcess, roots: bytes) -> tuple[str, int]:
    """GetCABundle's trust bundle and its version."""
    with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(roots)) as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        resp = stub.GetCABundle(enrollment_pb2.GetCABundleRequest(), timeout=10)
        return str(resp.trust_bundle_pem), int(resp.trust_bundle_version)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError: another CA
        return False
    return True


def test_b_follows_a_s_activation(backend: str) -> None:
    with replicas() as (a, b, root):
        agent = root / "alice"
        assert enroll(a, agent, a.token("alice", "web")).returncode == 0
        old = x509.load_pem_x509_certificate((agent / "ca.crt").read_bytes())
        a.admin("ca", "rotate")
        a.admin("ca", "activate", "--now")
        cas = json.loads(b.admin("ca", "status", "--json").stdout)
        assert [(c["generation"], c["state"]) for c in cas] == [(1, "retiring"), (2, "active")]
        new = x509.load_pem_x509_certificate(a.admin("ca", "cert").stdout.encode())  # the active CA
        assert new != old and cas[1]["fingerprint"] == fingerprint(new.public_bytes(Encoding.DER))
        wait_until(lambda: _issued_by(_served(b, agent), new), 30, "B serves a certificate from the new CA")
        assert _issued_by(_served(a, agent), new)
        roots = old.public_bytes(PEM) + new.public_bytes(PEM)
        wait_until(lambda: _bundle(a, roots) == _bundle(b, roots), 30, "A and B serve one trust bundle")
        assert parse_bundle(_bundle(b, roots).encode()).cas == (new, old)
        # The same version too, from either replica: the seq of the activation's 'bundle' event.
        wait_until(lambda: _versioned(a, roots) == _versioned(b, roots), 30, "A and B serve one version")
        assert _versioned(b, roots)[1] > 0
