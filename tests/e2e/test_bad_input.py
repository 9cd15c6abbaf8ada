"""Bad input, one case at a time: the right status or exit code, and the store unchanged.

Each case talks to a real kms-server over real TLS, with the raw gRPC stubs
(so the status code is the server's, not a client-side mapping) or with the
real kms-agent / kms-server CLIs.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kms.v1 import enrollment_pb2, enrollment_pb2_grpc, identity_pb2, identity_pb2_grpc
from tests.harness import ServerProcess, agent, assert_one_line_error, enroll, snapshot
from tests.pki import csr_der, foreign_ca_and_client, key_pem, pem

BAD_TOKEN_MESSAGE = "join token is invalid, expired or already used"


def _ca_pem(server: ServerProcess) -> bytes:
    return (server.data_dir / "ca.crt").read_bytes()  # what `kms-server ca cert` prints


@contextmanager
def _channel(
    server: ServerProcess, *, api: bool = False, key: bytes | None = None, cert: bytes | None = None
) -> Iterator[grpc.Channel]:
    creds = grpc.ssl_channel_credentials(_ca_pem(server), private_key=key, certificate_chain=cert)
    with grpc.secure_channel(server.address if api else server.enroll_address, creds) as channel:
        yield channel


def _enroll(server: ServerProcess, token: str, csr: bytes) -> enrollment_pb2.EnrollResponse:
    with _channel(server) as ch:
        return enrollment_pb2_grpc.EnrollmentStub(ch).Enroll(
            enrollment_pb2.EnrollRequest(join_token=token, csr_der=csr), timeout=15
        )


def _enroll_fails(server: ServerProcess, token: str, csr: bytes, code: grpc.StatusCode) -> str:
    """Asserts the enrollment fails with code and that nothing in the store changed."""
    before = snapshot(server)
    with pytest.raises(grpc.RpcError) as info:
        _enroll(server, token, csr)
    assert info.value.code() == code, info.value.details()
    assert snapshot(server) == before
    return info.value.details() or ""


def _still_serving(server: ServerProcess) -> None:
    with _channel(server) as ch:
        bundle = enrollment_pb2_grpc.EnrollmentStub(ch).GetCABundle(
            enrollment_pb2.GetCABundleRequest(), timeout=10
        )
    assert "BEGIN CERTIFICATE" in bundle.ca_bundle_pem


# --- CSRs --------------------------------------------------------------------


def _bad_signature(key: rsa.RSAPrivateKey) -> bytes:
    der = bytearray(csr_der(key))
    der[-5] ^= 0x01  # inside the signature value
    return bytes(der)


@pytest.mark.parametrize(
    "make_csr, needle",
    [
        pytest.param(lambda k: b"\x30\x03garbage", "not a valid DER PKCS#10", id="garbage-bytes"),
        pytest.param(lambda k: b"", "CSR is empty", id="empty"),
        pytest.param(_bad_signature, "signature does not verify", id="signature-mismatch"),
        pytest.param(lambda k: csr_der(ec.generate_private_key(ec.SECP256R1())), "must be RSA", id="ec-key"),
        pytest.param(
            lambda k: csr_der(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "RSA-1024",
            id="rsa-1024",
        ),
    ],
)
def test_bad_csr_is_invalid_argument_and_leaves_token_usable(
    server: ServerProcess, rsa_key: rsa.RSAPrivateKey, make_csr, needle
) -> None:  # type: ignore[no-untyped-def]
    name = (
        "csr-" + "".join(c for c in needle.lower() if c.isalnum())[:20]
    )  # one name per case: one identity each
    token = server.token(name)
    details = _enroll_fails(server, token, make_csr(rsa_key), grpc.StatusCode.INVALID_ARGUMENT)
    assert needle in details
    # The failed call consumed nothing: the same token still enrolls.
    assert _enroll(server, token, csr_der(rsa_key)).name == name
    _still_serving(server)


def test_csr_asking_for_more_gets_only_the_profile(server: ServerProcess, rsa_key: rsa.RSAPrivateKey) -> None:
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root-of-everything")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("evil.example"),
                    x509.UniformResourceIdentifier("spiffe://seed-kms.local/agent/admin"),
                ]
            ),
            critical=False,
        )
        .sign(rsa_key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    resp = _enroll(server, server.token("modest"), greedy.public_bytes(serialization.Encoding.DER))
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    assert cert.subject.rfc4514_string() == "CN=modest"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("spiffe://seed-kms.local/agent/modest")]


def test_oversized_request_is_resource_exhausted(server: ServerProcess, rsa_key: rsa.RSAPrivateKey) -> None:
    token = server.token("big")
    _enroll_fails(server, token, b"\x30" * (2 * 1024 * 1024), grpc.StatusCode.RESOURCE_EXHAUSTED)
    _still_serving(server)


# --- tokens ------------------------------------------------------------------


def test_reused_expired_unknown_tokens_are_one_unauthenticated(
    server: ServerProcess, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    used = server.token("reuse")
    _enroll(server, used, csr_der(rsa_key))
    expired = server.token("late", ttl="1s")
    time.sleep(1.2)
    unknown = f"{secrets.token_hex(8)}.{'A' * 43}"
    # A used token is refused for any other key (the same key gets its certificate again:
    # tests/e2e/test_attacks_admin.py).
    messages = {
        _enroll_fails(server, t, csr_der(other_rsa_key), grpc.StatusCode.UNAUTHENTICATED)
        for t in (used, expired, unknown)
    }
    # One message for all three: nobody learns which tokens exist.
    assert len(messages) == 1 and BAD_TOKEN_MESSAGE in messages.pop()


def test_malformed_token_is_invalid_argument(server: ServerProcess, rsa_key: rsa.RSAPrivateKey) -> None:
    _enroll_fails(server, "not-a-token", csr_der(rsa_key), grpc.StatusCode.INVALID_ARGUMENT)


def test_racing_enrollments_on_one_token_exactly_one_wins(
    server: ServerProcess, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    """One certificate is issued; the racers with the winner's key get that one, the others are refused."""
    token = server.token("racer")
    csrs = [csr_der(rsa_key), csr_der(other_rsa_key)]
    racers = 8
    barrier = threading.Barrier(racers)
    outcomes: list[tuple[int, str, bytes]] = []

    def race(i: int) -> None:
        barrier.wait()
        try:
            resp = _enroll(server, token, csrs[i % 2])
            outcomes.append((i % 2, "ok", resp.certificate_der))
        except grpc.RpcError as exc:
            outcomes.append((i % 2, exc.code().name, b""))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    rows = snapshot(server)["certificates"]
    assert sum(1 for r in rows if r[1] == "racer") == 1
    winners = {key for key, outcome, _ in outcomes if outcome == "ok"}
    assert len(winners) == 1, outcomes
    (winner,) = winners
    assert sorted(o for k, o, _ in outcomes if k == winner) == ["ok"] * (racers // 2)
    assert sorted(o for k, o, _ in outcomes if k != winner) == ["UNAUTHENTICATED"] * (racers // 2)
    assert len({der for _, o, der in outcomes if o == "ok"}) == 1  # the one certificate, every time


# --- the agent CLI -------------------------------------------------------------


def test_wrong_ca_fingerprint_aborts_before_the_token_is_sent(
    server: ServerProcess, tmpdir_short: Path
) -> None:
    token = server.token("pinned")
    before = snapshot(server)
    wrong = "sha256:" + "ab" * 32
    result = enroll(server, tmpdir_short / "a", token, ca_fingerprint=wrong)
    assert_one_line_error(result, 3, "does not match --ca-fingerprint " + wrong, "token was not sent")
    assert server.fingerprint in result.stderr  # what the server offers
    assert snapshot(server) == before
    assert not (tmpdir_short / "a").exists()  # nothing written, not even the key
    # The token is still good with the right pin.
    assert enroll(server, tmpdir_short / "a", token).returncode == 0


@pytest.mark.parametrize(
    "args, code, needle",
    [
        pytest.param(["status"], 6, "not enrolled", id="status-unenrolled"),
        pytest.param(
            ["enroll", "--server", "127.0.0.1:1", "--token", "x.y"], 2, "--ca-fingerprint", id="missing-flag"
        ),
        pytest.param(
            ["enroll", "--server", "127.0.0.1:1", "--token", "x", "--ca-fingerprint", "sha256:zz"],
            2,
            "64 hex digits",
            id="bad-fingerprint",
        ),
        pytest.param(["frobnicate"], 2, "invalid choice", id="unknown-command"),
    ],
)
def test_agent_cli_errors_are_one_line(tmpdir_short: Path, args: list[str], code: int, needle: str) -> None:
    assert_one_line_error(agent(tmpdir_short / "a", *args), code, needle)


def test_agent_cannot_reach_server_is_one_line(tmpdir_short: Path) -> None:
    result = agent(
        tmpdir_short / "a",
        "enroll",
        "--server",
        "127.0.0.1:9",
        "--enroll-server",
        "127.0.0.1:9",
        "--token",
        "x",
        "--ca-fingerprint",
        "sha256:" + "00" * 32,
    )
    assert_one_line_error(result, 8, "cannot reach")


# --- mutual TLS ------------------------------------------------------------------


def test_client_certificate_from_another_ca_is_refused(
    server: ServerProcess, rsa_key: rsa.RSAPrivateKey
) -> None:
    _, forged = foreign_ca_and_client(rsa_key, "seed-kms.local", "web-1")
    with (
        _channel(server, api=True, key=key_pem(rsa_key), cert=pem(forged)) as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        identity_pb2_grpc.IdentityStub(ch).WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)
    # The TLS handshake itself refuses it: the call never reaches a handler.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    _still_serving(server)


def test_no_client_certificate_on_mtls_method(server: ServerProcess) -> None:
    # On the API port the handshake requires a certificate.
    with _channel(server, api=True) as ch, pytest.raises(grpc.RpcError) as info:
        identity_pb2_grpc.IdentityStub(ch).WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The enrollment port does not serve it at all (and so counts it against nobody).
    with _channel(server) as ch, pytest.raises(grpc.RpcError) as info:
        identity_pb2_grpc.IdentityStub(ch).WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    _still_serving(server)


def test_admin_methods_are_not_served_on_the_network(server: ServerProcess) -> None:
    from kms.v1 import admin_pb2, admin_pb2_grpc

    with _channel(server) as ch, pytest.raises(grpc.RpcError) as info:
        admin_pb2_grpc.AdminStub(ch).CreateJoinToken(admin_pb2.CreateJoinTokenRequest(name="x"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_old_certificate_keeps_its_own_groups(server: ServerProcess, tmpdir_short: Path) -> None:
    """Re-enrolling a name with new groups does not lend them to the earlier certificate."""
    import json
    import shutil

    first, second = tmpdir_short / "first", tmpdir_short / "second"
    assert enroll(server, first, server.token("reimaged", "staging")).returncode == 0
    old = json.loads(agent(first, "status", "--json").stdout)
    shutil.copytree(first, second)
    # The name holds a valid certificate: re-enrolling it takes --replace, which revokes that one.
    token = server.admin(
        "token", "create", "--name", "reimaged", "--group", "prod", "--replace", "--yes"
    ).stdout.strip()
    result = enroll(server, second, token, force="")
    assert result.returncode == 0, result.stderr
    new = json.loads(agent(second, "status", "--json").stdout)
    assert old["serial"] != new["serial"]
    assert (old["groups"], new["groups"]) == (["staging"], ["prod"])
    assert_one_line_error(agent(first, "status"), 11, "superseded")
    groups = {r[0]: json.loads(r[7]) for r in snapshot(server)["certificates"] if r[1] == "reimaged"}
    assert groups == {old["serial"]: ["staging"], new["serial"]: ["prod"]}


def test_admin_rpc_with_absurd_ttl_is_invalid_argument(server: ServerProcess) -> None:
    from kms.v1 import admin_pb2, admin_pb2_grpc

    creds = grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
    with grpc.secure_channel(f"unix:{server.data_dir / 'admin.sock'}", creds) as ch:
        for ttl in (2**63 - 1, -5):
            with pytest.raises(grpc.RpcError) as info:
                admin_pb2_grpc.AdminStub(ch).CreateJoinToken(
                    admin_pb2.CreateJoinTokenRequest(name="x", ttl_seconds=ttl), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- the admin CLI -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        pytest.param(["token", "create", "--name", "Bad Name"], "agent name", id="bad-name"),
        pytest.param(["token", "create", "--name", "ok", "--group", "a b"], "group", id="bad-group"),
        pytest.param(
            ["token", "create", "--name", "ok", "--ttl", "15 minutes"], "not a duration", id="bad-ttl"
        ),
        pytest.param(["token", "create", "--name", "ok", "--ttl", "30d"], "token TTL", id="ttl-too-long"),
    ],
)
def test_admin_bad_input_is_one_line_and_changes_nothing(
    server: ServerProcess, args: list[str], needle: str
) -> None:
    before = snapshot(server)
    assert_one_line_error(server.admin(*args, check=False), 2, needle)
    assert snapshot(server) == before


def test_admin_without_server_is_one_line(tmpdir_short: Path) -> None:
    from tests.harness import exe, run

    result = run([exe("kms-server"), "agents", "list", "--data-dir", str(tmpdir_short)])
    assert_one_line_error(result, 8, "no kms-server is running")
