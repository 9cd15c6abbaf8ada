"""Emergency CA rotation (issue 19 §1): ``kms-server ca rotate --now --revoke-old``, against one real
server and real agents. Without a terminal and --yes it is refused and changes nothing. With --yes the
new CA issues at once; every valid certificate of the old one is revoked (cACompromise): the watching
agent hears its own revocation and exits 11, dropping the old CA from its trust; another agent's
next call is refused; the old CA is retired, out of the trust bundle. An agent that was offline
(bob, who never heard of the new CA; carol, who heard of it prepared) starts `kms-agent watch` or
`run`, reads the bundle from the enrollment address, and ends with exit 11 saying its CA was retired. Each agent gets
back in with a new join token (no --allow-reenroll: the agents were not barred) and
`kms-agent enroll --force`, and its certificate chains to the new CA.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.state import StateDir
from kms.cabundle import parse_bundle
from kms.identity import fingerprint
from kms.v1 import enrollment_pb2, enrollment_pb2_grpc, revocation_pb2, revocation_pb2_grpc
from tests.e2e.rig import Rig
from tests.harness import ServerProcess, WatchProcess, agent, assert_one_line_error, enroll

pytestmark = pytest.mark.sqlite_only(
    "what the command, the server and the agents do; the store transaction runs on both backends in"
    " tests/unit/server/test_ca_generations.py"
)

RIG = Rig("cacomp", agents=(("alice", ("web",)), ("bob", ("web",)), ("carol", ("web",))))


def _status(server: ServerProcess) -> list[dict[str, object]]:
    return list(json.loads(server.admin("ca", "status", "--json").stdout))


def test_emergency_rotation_revokes_the_old_ca_and_agents_reenroll(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    before = _status(server)
    # Piped, no --yes: refused before anything is asked of the server.
    refused = server.admin("ca", "rotate", "--now", "--revoke-old", check=False)
    assert_one_line_error(refused, 2, "pass --yes")
    assert_one_line_error(server.admin("ca", "rotate", "--revoke-old", check=False), 2, "needs --now")
    assert _status(server) == before
    assert agent(root / "bob", "check", "--cert", str(root / "bob" / "agent.crt")).returncode == 0

    watch, carol = WatchProcess(root / "alice"), WatchProcess(root / "carol")
    try:
        watch.wait_live()
        carol.wait_live()
        # alice and carol hear of a prepared CA first (bob, offline, does not); carol goes offline;
        # then it is activated at once.
        assert server.admin("ca", "rotate").stdout.startswith("prepared CA generation 2")
        watch.wait_for(lambda evs: any(e["kind"] == "bundle" for e in evs))
        carol.wait_for(lambda evs: any(e["kind"] == "bundle" for e in evs))
        assert carol.stop() == 0
        done = server.admin("ca", "activate", "--now", "--revoke-old", "--yes")
        assert done.stdout.startswith("activated CA generation 2"), done.stdout
        assert "kms-agent enroll --force" in done.stdout
        # alice's watch hears the revocation of its own certificate, and exits as on any revocation.
        watch.wait_for(lambda evs: any(e["kind"] == "cert" and e["reason"] == "cACompromise" for e in evs))
        assert watch.proc.wait(15) == 11, "".join(watch.stderr)
    finally:
        watch.stop()
    cas = _status(server)
    assert [(c["generation"], c["state"], c["valid_certificates"]) for c in cas] == [
        (1, "retired", 0),
        (2, "active", 0),
    ]
    assert cas[0]["retired_at"] is not None
    # alice dropped the compromised CA when she heard of her revocation: she trusts the new one alone.
    trust = StateDir(root / "alice").trust(datetime.now(UTC))
    assert [fingerprint(c.public_bytes(Encoding.DER)) for c in trust] == [cas[1]["fingerprint"]]
    dropped = json.loads((root / "alice" / "dropped-cas.json").read_text())["dropped"]
    assert [
        fingerprint(x509.load_pem_x509_certificate(d.encode()).public_bytes(Encoding.DER)) for d in dropped
    ] == [cas[0]["fingerprint"]]
    # bob never heard of the new CA: he cannot verify the server any more (nor should he trust
    # anything the old CA vouches for). His next call fails, in one line.
    cut_off = agent(root / "bob", "check", "--cert", str(root / "bob" / "agent.crt"))
    assert_one_line_error(cut_off, 8, "does not verify against the pinned CA")
    # bob (watch) and carol (run; the server now refuses her certificate, though she trusts its CA)
    # come back online: each reads the bundle, learns its CA was retired, and stops, saying what to do.
    for name, command in (("bob", ("watch",)), ("carol", ("run", "--no-listen"))):
        late = agent(root / name, *command)
        assert late.returncode == 11, late.stderr
        assert late.stderr.splitlines()[-1] == (
            f"kms-agent: error: this agent's certificate was issued by CA {cas[0]['fingerprint']} which this"
            f" agent no longer trusts (retired, or compromised): ask for a new join token (kms-server token create --name"
            f" {name}) and run kms-agent enroll --force"
        ), late.stderr
    revoked = json.loads(server.admin("revocations", "list", "--json").stdout)
    assert {r["reason"] for r in revoked} == {"cACompromise"} and len(revoked) == 3, revoked
    # The retired CA still signs its CRL (served at /crl, which its certificates name) until they
    # expire, listing them as cACompromise (RFC 5280): with its own key.
    crl = x509.load_der_x509_crl(_crl(server, cas[1]["certificate_pem"]))
    old_ca = x509.load_pem_x509_certificate(str(cas[0]["certificate_pem"]).encode())
    assert crl.issuer == old_ca.subject and crl.is_signature_valid(old_ca.public_key())  # type: ignore[arg-type]
    assert {format(c.serial_number, "x") for c in crl} == {r["serial"] for r in revoked}
    # The old CA is out of the trust bundle: the new one alone, which the server's TLS chains to.
    bundle = parse_bundle(_bundle(server, cas[1]["certificate_pem"]))
    assert [fingerprint(c.public_bytes(Encoding.DER)) for c in bundle.cas] == [cas[1]["fingerprint"]]
    # A new token (no --allow-reenroll) and enroll --force: bob is back, under the new CA.
    pin = server.admin("ca", "fingerprint").stdout.strip()
    assert pin == cas[1]["fingerprint"]
    again = enroll(server, root / "bob", server.token("bob", "web"), ca_fingerprint=pin, force="")
    assert again.returncode == 0, again.stderr
    cert = x509.load_pem_x509_certificate((root / "bob" / "agent.crt").read_bytes())
    cert.verify_directly_issued_by(bundle.cas[0])  # the new CA
    assert agent(root / "bob", "check", "--cert", str(root / "bob" / "agent.crt")).returncode == 0
    _rotate_now_revoke_old_in_one_command(server)


def _bundle(server: ServerProcess, ca_pem: object) -> str:
    """GetCABundle's trust bundle, over TLS verified with the new CA (the server's TLS chains to it)."""
    creds = grpc.ssl_channel_credentials(str(ca_pem).encode())
    with grpc.secure_channel(server.enroll_address, creds) as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        return str(stub.GetCABundle(enrollment_pb2.GetCABundleRequest(), timeout=10).trust_bundle_pem)


def _crl(server: ServerProcess, ca_pem: object) -> bytes:
    """GetCRL{} (what /crl serves), over TLS verified with the new CA."""
    creds = grpc.ssl_channel_credentials(str(ca_pem).encode())
    with grpc.secure_channel(server.enroll_address, creds) as channel:
        stub = revocation_pb2_grpc.RevocationStub(channel)
        return bytes(stub.GetCRL(revocation_pb2.GetCRLRequest(), timeout=10).crl_der)


def _rotate_now_revoke_old_in_one_command(server: ServerProcess) -> None:
    """The one-command form, when nothing was prepared: a new CA prepared and activated at once."""
    before = _status(server)
    done = server.admin("ca", "rotate", "--now", "--revoke-old", "--yes", "--key-type", "ecdsa-p384")
    assert done.stdout.startswith(f"prepared and activated CA generation {len(before) + 1} (ecdsa-p384"), (
        done.stdout
    )
    cas = _status(server)
    assert [c["state"] for c in cas] == [*(["retired"] * len(before)), "active"]
    assert all(c["valid_certificates"] == 0 for c in cas)
    bundle = parse_bundle(_bundle(server, cas[-1]["certificate_pem"]))
    assert [fingerprint(c.public_bytes(Encoding.DER)) for c in bundle.cas] == [cas[-1]["fingerprint"]]
