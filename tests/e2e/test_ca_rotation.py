"""CA rotation (issue 19 §1), against one real server and a real kms-agent watch: ca rotate
prepares the next CA, ca status lists both, the watching agent stores the trust bundle (verified
through the cross-certificate) and status shows it, openssl verifies the new CA's
cross-certificate with the old CA as the trust anchor, and a second rotate is refused. Until
then the server and the agent keep the CA they had. Then ca activate (refused before
ca-propagation, --now skips it): the certificate the mTLS port serves comes from the new CA, the
agent still calls it with its old certificate, its renewal chains to the new CA, and a restart
with the old TLS certificate in the data dir serves the new CA's from its first handshake. A join
token made before the rotation, with the old CA's fingerprint, still enrolls after the activation:
the agent verifies the server's trust bundle from the pinned CA and then calls the server.

The commands run in this process (main(argv), as the console scripts call it), as in
test_output.py; the watch is a real child process.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from agent.bootstrap import presented_ca
from agent.bundle import catch_up
from agent.cli import main as agent_main
from agent.state import StateDir
from kms import profile
from kms.cabundle import parse_bundle
from kms.identity import fingerprint
from kms.v1 import enrollment_pb2, enrollment_pb2_grpc, revocation_pb2, revocation_pb2_grpc
from server.ca.authority import create_root
from server.cli import main as server_main
from tests import pki
from tests.e2e.rig import Rig
from tests.harness import ServerProcess, WatchProcess, enroll, short_tmpdir

pytestmark = pytest.mark.sqlite_only(
    "what the commands and the agent do; the store's part (adoption, one rotation among replicas)"
    " runs on both backends in tests/unit/server/test_ca_generations.py"
)

RIG = Rig("carot", args=("--http-listen", "127.0.0.1:0"), agents=(("alice", ("web",)),))


def test_rotate_status_bundle_and_refusal(
    rig: tuple[ServerProcess, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server, root = rig
    data = ["--data-dir", str(server.data_dir)]
    old_pem = (server.data_dir / "ca.crt").read_bytes()
    agent_ca = (root / "alice" / "ca.crt").read_bytes()
    early = server.token("newbie", "web")  # pins generation 1 (server.fingerprint)
    watch = WatchProcess(root / "alice")
    try:
        # Piped (no terminal): no question asked, since nothing issues from the prepared CA yet.
        assert server_main(["ca", "rotate", "--key-type", "ecdsa-p384", *data]) == 0
        out = capsys.readouterr().out
        assert out.startswith("prepared CA generation 2 (ecdsa-p384, sha256:"), out
        assert server_main(["ca", "status", "--json", *data]) == 0
        cas = json.loads(capsys.readouterr().out)
        assert [(c["generation"], c["state"], c["key_type"]) for c in cas] == [
            (1, "active", "ecdsa-p256"),
            (2, "prepared", "ecdsa-p384"),
        ]
        assert [(c["valid_certificates"], c["cross_certified"]) for c in cas] == [(1, False), (0, True)]
        assert cas[1]["activated_at"] is None
        # The agent hears the 'bundle' event, checks the bundle from the CA it trusts (the pinned
        # one, alone in the bundle stored at enrollment) and stores it (before it prints the event).
        watch.wait_for(lambda evs: any(e["kind"] == "bundle" for e in evs))
        stored = root / "alice" / "trust-bundle.pem"
        assert stored.stat().st_mode & 0o777 == 0o644
        # The bundle's version: the seq of the 'bundle' event (the prepare), as the server serves it.
        (prepared,) = [e["seq"] for e in watch.events if e["kind"] == "bundle"]
        assert _served_version(server) == prepared > 0
        assert agent_main(["status", "--json", "--dir", str(root / "alice")]) == 0
        shown = json.loads(capsys.readouterr().out)
        trusted = shown["trusted_cas"]
        assert shown["trust_bundle_version"] == prepared
        assert stored.read_text().startswith(f"# trust bundle version {prepared}\n")
        assert [(c["fingerprint"], c["pinned"]) for c in trusted] == [
            (cas[0]["fingerprint"], True),
            (cas[1]["fingerprint"], False),
        ]
        assert trusted[1]["not_after"] == cas[1]["not_after"]
        # A second rotation while one is prepared: one line, wrong state (exit 6).
        assert server_main(["ca", "rotate", *data]) == 6
        err = capsys.readouterr().err.strip()
        assert err.startswith("kms-server: error: CA generation 2 is prepared already") and "\n" not in err
        # An agent enrolled after the event stores the bundle as it enrolls. One offline during
        # the event (its bundle from before it) fetches the bundle as its watch stream starts.
        assert enroll(server, root / "late", server.token("late", "web")).returncode == 0
        late_bundle = root / "late" / "trust-bundle.pem"
        assert late_bundle.read_bytes() == stored.read_bytes()
        late_bundle.write_bytes(old_pem)
        late = WatchProcess(root / "late")
        try:
            late.wait_live()
            deadline = time.monotonic() + 15
            while late_bundle.read_bytes() == old_pem and time.monotonic() < deadline:
                time.sleep(0.1)
            assert late_bundle.read_bytes() == stored.read_bytes()
        finally:
            assert late.stop() == 0
        # Its bundle from before, at a higher version than the server's (as a lagging replica's
        # looks to an agent that took a newer one): refused at the stream's start, one line.
        late_bundle.write_bytes(b"# trust bundle version %d\n" % (prepared + 100) + old_pem)
        late = WatchProcess(root / "late")
        try:
            late.wait_live()
            deadline = time.monotonic() + 15
            while not any("is older than the one this agent holds" in line for line in late.stderr):
                assert time.monotonic() < deadline, late.stderr
                time.sleep(0.1)
        finally:
            assert late.stop() == 0
        refused = [line for line in late.stderr if "is older than" in line]
        assert (
            f"the server's trust bundle (version {prepared}) is older than the one this agent holds"
            f" (version {prepared + 100}): kept the trust as it was; a replica that lags serves it"
            in refused[0]
        )
        assert late_bundle.read_bytes() == b"# trust bundle version %d\n" % (prepared + 100) + old_pem
    finally:
        assert watch.stop() == 0
    # openssl: the cross-certificate verifies with the old CA as the only trust anchor, and
    # carries the new CA's key; the new CA alone does not verify there.
    bundle = parse_bundle(stored.read_bytes())
    (cross,) = bundle.crosses
    assert cross.public_key() == bundle.cas[1].public_key()
    (tmp_path / "old.pem").write_bytes(old_pem)
    (tmp_path / "cross.pem").write_bytes(cross.public_bytes(Encoding.PEM))
    (tmp_path / "new.pem").write_bytes(bundle.cas[1].public_bytes(Encoding.PEM))
    ok = _openssl_verify(tmp_path / "old.pem", tmp_path / "cross.pem")
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stdout + ok.stderr
    assert _openssl_verify(tmp_path / "old.pem", tmp_path / "new.pem").returncode != 0
    # Nothing was activated: the server's CA and the agent's pinned CA are as they were.
    assert (server.data_dir / "ca.crt").read_bytes() == old_pem == bundle.cas[0].public_bytes(Encoding.PEM)
    assert (root / "alice" / "ca.crt").read_bytes() == agent_ca
    assert x509.load_pem_x509_certificate(old_pem) == bundle.cas[0]
    _activate(server, root / "alice", bundle.cas[1], capsys)
    _enroll_with_a_token_from_before(server, root / "newbie", early, bundle.cas, capsys)


def _activate(
    server: ServerProcess, agent: Path, new: x509.Certificate, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(server.data_dir)]
    # The server's TLS certificate and key as they are before the activation (for the restart below).
    before = {name: (server.data_dir / name).read_bytes() for name in ("server.crt", "server.key")}
    old = x509.load_pem_x509_certificate(before["server.crt"])
    assert _served(server, agent) == old
    assert server_main(["ca", "activate", *data]) == 6  # ca-propagation (24h) has not passed
    err = capsys.readouterr().err.strip()
    assert "agents may not have its trust bundle yet" in err and "\n" not in err, err
    assert server_main(["ca", "activate", "--now", *data]) == 0
    assert capsys.readouterr().out.startswith("activated CA generation 2 (ecdsa-p384, sha256:")
    assert server_main(["ca", "status", "--json", *data]) == 0
    cas = json.loads(capsys.readouterr().out)
    assert [(c["generation"], c["state"]) for c in cas] == [(1, "retiring"), (2, "active")]
    # The server's own TLS certificate was reissued from the new CA, without a restart: the one the
    # mTLS port serves from the next handshake on.
    served = x509.load_pem_x509_certificate((server.data_dir / "server.crt").read_bytes())
    served.verify_directly_issued_by(new)
    assert _served(server, agent) == served
    # The agent (its trust bundle stored) still calls the server with its old certificate...
    old_cert = x509.load_pem_x509_certificate((agent / "agent.crt").read_bytes())
    assert agent_main(["status", "--json", "--dir", str(agent)]) == 0
    assert json.loads(capsys.readouterr().out)["serial"] == format(old_cert.serial_number, "x")
    # ...and its renewal comes from the new CA, which it then calls the server with.
    assert agent_main(["renew", "--dir", str(agent)]) == 0
    capsys.readouterr()
    renewed = x509.load_pem_x509_certificate((agent / "agent.crt").read_bytes())
    renewed.verify_directly_issued_by(new)
    assert agent_main(["status", "--json", "--dir", str(agent)]) == 0
    assert json.loads(capsys.readouterr().out)["serial"] == format(renewed.serial_number, "x")
    # Each certificate names its own generation's CRL, signed by that generation's key.
    first = x509.load_pem_x509_certificate((agent / "ca.crt").read_bytes())
    for cert, url_end, ca in ((old_cert, "/crl", first), (renewed, "/crl/2", new)):
        (point,) = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert point.full_name is not None
        url = str(point.full_name[0].value)
        assert url.endswith(url_end), url
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the server's own http URL
            crl = x509.load_der_x509_crl(answer.read())
        assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    # The same over gRPC (anonymous, on the enrollment port): GetCRL{generation}.
    roots = first.public_bytes(Encoding.PEM) + new.public_bytes(Encoding.PEM)
    with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(roots)) as channel:
        get_crl = revocation_pb2_grpc.RevocationStub(channel).GetCRL
        for generation, ca in ((0, first), (1, first), (2, new)):
            der = get_crl(revocation_pb2.GetCRLRequest(generation=generation), timeout=10).crl_der
            assert x509.load_der_x509_crl(der).is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as refused:
            get_crl(revocation_pb2.GetCRLRequest(generation=9), timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    # A replica restarted with the old CA's TLS certificate in its data dir (down during the
    # activation, say) follows the active CA before it serves: its first handshake is the new CA's.
    assert server.stop() == 0
    for name, content in before.items():
        (server.data_dir / name).write_bytes(content)
    server.start()
    _served(server, agent).verify_directly_issued_by(new)
    assert server_main(["ca", "status", "--json", *data]) == 0
    assert [c["state"] for c in json.loads(capsys.readouterr().out)] == ["retiring", "active"]


def _served(server: ServerProcess, agent: Path) -> x509.Certificate:
    """The certificate the mTLS port serves, as a TLS client (the agent's certificate) reads it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # read it, whoever issued it
    context.load_cert_chain(agent / "agent.crt", agent / "agent.key")
    host, port = server.address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _enroll_with_a_token_from_before(
    server: ServerProcess,
    agent: Path,
    token: str,
    cas: tuple[x509.Certificate, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = cas
    # --ca-fingerprint: generation 1's, as the token was made (the server, restarted since, now
    # names the active CA's in its ready line).
    result = enroll(server, agent, token, ca_fingerprint=fingerprint(old.public_bytes(Encoding.DER)))
    assert result.returncode == 0, result.stderr
    x509.load_pem_x509_certificate((agent / "agent.crt").read_bytes()).verify_directly_issued_by(new)
    assert (agent / "ca.crt").read_bytes() == old.public_bytes(Encoding.PEM)  # the pinned CA
    # It calls the server (whose certificate is the new CA's) over mTLS, trusting both generations.
    assert agent_main(["status", "--json", "--dir", str(agent)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["name"] == "newbie" and status["status"] == "valid"
    assert [c["pinned"] for c in status["trusted_cas"]] == [False, True]
    # Enrollment stored the bundle's version: the activation's (the newest 'bundle' event).
    assert status["trust_bundle_version"] == _served_version(server) > 0


def _served_version(server: ServerProcess) -> int:
    """GetCABundle's trust_bundle_version, read anonymously on the enrollment port (verified under
    the CA it presents, as enrollment reads the bundle)."""
    host, port = server.enroll_address.rsplit(":", 1)
    creds = grpc.ssl_channel_credentials(presented_ca(host, int(port), 10).public_bytes(Encoding.PEM))
    with grpc.secure_channel(server.enroll_address, creds) as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        return int(stub.GetCABundle(enrollment_pb2.GetCABundleRequest(), timeout=10).trust_bundle_version)


def _openssl_verify(anchor: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(anchor), str(cert)], capture_output=True, text=True, check=False
    )


def test_catch_up_takes_nothing_from_an_impostor(
    rig: tuple[ServerProcess, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """catch_up reads a bundle over a connection it cannot verify yet: from another deployment (an
    impostor on the network, with its own CA), it stores nothing and drops nothing."""
    _, root = rig
    state = StateDir(root / "alice")
    before = (state.stored_bundle() if state.trust_bundle.exists() else None, state.dropped())
    impostor = ServerProcess(short_tmpdir("carimp") / "d").start()
    try:
        with caplog.at_level("WARNING", logger="agent.bundle"):
            assert not catch_up(state, (impostor.enroll_address,), datetime.now(UTC), 10)
    finally:
        assert impostor.stop() == 0
    after = (state.stored_bundle() if state.trust_bundle.exists() else None, state.dropped())
    assert after == before
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"could not read the trust bundle at {impostor.enroll_address}: CA "), line
    assert line.endswith("has no valid cross-certificate from a trusted CA"), line


class _Replay(enrollment_pb2_grpc.EnrollmentServicer):
    """An impostor on the network: the deployment's real, public trust bundle (verified by its
    cross-certificates) with a version far ahead, behind a TLS certificate of its own CA."""

    def __init__(self, pem: str) -> None:
        self._pem = pem

    def GetCABundle(self, request: object, context: object) -> enrollment_pb2.GetCABundleResponse:  # noqa: N802
        return enrollment_pb2.GetCABundleResponse(trust_bundle_pem=self._pem, trust_bundle_version=2**63)


def test_catch_up_takes_nothing_from_an_impostor_replaying_the_real_bundle(
    rig: tuple[ServerProcess, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The replayed bundle verifies, but the CA the impostor presents is none it vouches for:
    nothing is stored, dropped or frozen (its version is never taken)."""
    _, root = rig
    state = StateDir(root / "alice")
    real = state.trust_bundle.read_text() if state.trust_bundle.exists() else state.ca.read_text()
    now = datetime.now(UTC)
    ca = create_root("impostor.example", None, timedelta(days=1), now)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = profile.server_builder(
        leaf_key.public_key(), ca.cert, ("127.0.0.1",), x509.random_serial_number(), now, timedelta(hours=1)
    ).sign(ca.key, hashes.SHA256())
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    enrollment_pb2_grpc.add_EnrollmentServicer_to_server(_Replay(real), server)
    creds = grpc.ssl_server_credentials([(pki.key_pem(leaf_key), pki.pem(leaf) + pki.pem(ca.cert))])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    before = (state.trust_bundle.read_bytes() if state.trust_bundle.exists() else None, state.dropped())
    try:
        with caplog.at_level("WARNING", logger="agent.bundle"):
            assert not catch_up(state, (f"127.0.0.1:{port}",), now, 10)
    finally:
        server.stop(None)
    assert (
        state.trust_bundle.read_bytes() if state.trust_bundle.exists() else None,
        state.dropped(),
    ) == before
    (line,) = [r.getMessage() for r in caplog.records]
    assert "which nothing this agent trusts vouches for: kept the trust" in line, line
