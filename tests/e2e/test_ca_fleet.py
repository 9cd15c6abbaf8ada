"""CA rotation across a fleet (issue 19 §1), with real processes and short-lived certificates.

Agents: `a` runs `kms-agent run` (it renews), `b` holds a `kms-agent watch` stream while a
caller makes WhoAmI calls with b's certificate, over fresh connections, the whole time, and
`c` is offline. `ca rotate` then `ca activate --now`: no call fails; b's old certificate keeps
working; a's renewal and a new enrollment chain to the new CA; c, started after the
activation (it missed both events), catches up (the bundle, then the event log) and verifies
the server; `openssl verify` checks certificates of both generations against the bundle. Once
the first CA's last certificate has expired it is retired, and a second rotation leaves it out
of the bundle everywhere.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from kms.cabundle import parse_bundle
from kms.v1 import identity_pb2, identity_pb2_grpc
from tests.e2e.rig import Rig
from tests.harness import RunProcess, ServerProcess, WatchProcess, agent, enroll

pytestmark = pytest.mark.sqlite_only(
    "what the agents and the server do across a rotation; the store's part runs on both backends in"
    " tests/unit/server (test_ca_generations, test_ca_activation)"
)

TTL = 40  # seconds: agent certificates expire within the test, and kms-agent run renews at 2/3
RIG = Rig(
    "cafleet", args=("--cert-ttl", f"{TTL}s"), agents=(("a", ("web",)), ("b", ("web",)), ("c", ("web",)))
)


def _trust(state: Path) -> bytes:
    """What the agent trusts now: its stored trust bundle, else the CA it pinned."""
    bundle = state / "trust-bundle.pem"
    return bundle.read_bytes() if bundle.exists() else (state / "ca.crt").read_bytes()


class Caller:
    """WhoAmI with one agent's certificate and trust, a fresh connection every few calls."""

    def __init__(self, server: ServerProcess, state: Path) -> None:
        self.calls, self.failures = 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server.address, state), daemon=True)
        self._thread.start()

    def _run(self, address: str, state: Path) -> None:
        while not self._stop.is_set():
            creds = grpc.ssl_channel_credentials(
                _trust(state), (state / "agent.key").read_bytes(), (state / "agent.crt").read_bytes()
            )
            with grpc.secure_channel(address, creds) as channel:
                stub = identity_pb2_grpc.IdentityStub(channel)
                for _ in range(5):
                    try:
                        stub.WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)
                    except grpc.RpcError as exc:
                        self.failures.append(f"{exc.code()}: {exc.details()}")
                    self.calls += 1
                    time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def _status(server: ServerProcess) -> list[dict[str, object]]:
    return list(json.loads(server.admin("ca", "status", "--json").stdout))


def _issuer_generation(cert_pem: bytes, cas: list[dict[str, object]]) -> int:
    cert = x509.load_pem_x509_certificate(cert_pem)
    for ca in cas:
        try:
            cert.verify_directly_issued_by(
                x509.load_pem_x509_certificate(str(ca["certificate_pem"]).encode())
            )
        except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError: another generation's key
            continue
        return int(str(ca["generation"]))
    raise AssertionError("issued by none of the CA generations")


def _openssl_verify(bundle: Path, pem: bytes, where: Path) -> None:
    where.write_bytes(pem)
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", str(bundle), str(where)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stdout + ok.stderr


def _wait(predicate: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not in {timeout}s: {what}"
        time.sleep(0.2)


def test_rotation_across_a_fleet(rig: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, root = rig
    a_old = (root / "a" / "agent.crt").read_bytes()
    run = RunProcess(root / "a")
    watch = WatchProcess(root / "b")
    caller = Caller(server, root / "b")
    try:
        watch.wait_live()
        server.admin("ca", "rotate")
        _wait(lambda: (root / "a" / "trust-bundle.pem").exists(), "a stores the trust bundle")
        _wait(lambda: (root / "b" / "trust-bundle.pem").exists(), "b stores the trust bundle")
        server.admin("ca", "activate", "--now")
        cas = _status(server)
        assert [c["state"] for c in cas] == ["retiring", "active"]
        # The served certificate comes from the new CA; b's old certificate keeps working.
        assert _issuer_generation((server.data_dir / "server.crt").read_bytes(), cas) == 2
        time.sleep(1.5)
        caller.stop()  # calls through the rotation and after it, on fresh connections: none failed
        assert caller.calls > 20 and not caller.failures, (caller.calls, caller.failures[:5])
        assert _issuer_generation((root / "b" / "agent.crt").read_bytes(), cas) == 1
        _openssl_verify(root / "b" / "trust-bundle.pem", a_old, tmp_path / "old.pem")  # while it is valid
        # a renews (kms-agent run, at 2/3 of its certificate's life), from the new CA.
        _wait(lambda: (root / "a" / "agent.crt").read_bytes() != a_old, "a renews", timeout=TTL)
        assert _issuer_generation((root / "a" / "agent.crt").read_bytes(), cas) == 2
        # A new enrollment chains to the new CA.
        assert enroll(server, root / "d", server.token("d", "web")).returncode == 0
        assert _issuer_generation((root / "d" / "agent.crt").read_bytes(), cas) == 2
        # c missed the 'bundle' events and the activation: it catches up and verifies the server.
        late = WatchProcess(root / "c")
        try:
            late.wait_live()
        finally:
            assert late.stop() == 0
        assert len(parse_bundle((root / "c" / "trust-bundle.pem").read_bytes()).cas) == 2
    finally:
        caller.stop()
        assert watch.stop() == 0
        assert run.stop() == 0
    # openssl verifies a certificate of each generation against the trust bundle (the old one above).
    _openssl_verify(
        root / "b" / "trust-bundle.pem", (root / "a" / "agent.crt").read_bytes(), tmp_path / "new.pem"
    )
    # Once the first CA's last certificate has expired, it is retired; a second rotation leaves it out.
    _wait(lambda: _status(server)[0]["state"] == "retired", "the first CA retires", timeout=TTL + 10)
    server.admin("ca", "rotate")
    server.admin("ca", "activate", "--now")
    cas = _status(server)
    assert [c["state"] for c in cas] == ["retired", "retiring", "active"]
    watch = WatchProcess(root / "a")  # renewed under generation 2: it takes the new bundle
    try:
        watch.wait_live()
        _wait(
            lambda: len(parse_bundle((root / "a" / "trust-bundle.pem").read_bytes()).cas) == 2,
            "a drops gen 1",
        )
    finally:
        assert watch.stop() == 0
    status = json.loads(agent(root / "a", "status", "--json").stdout)
    assert {t["fingerprint"] for t in status["trusted_cas"]} == {c["fingerprint"] for c in cas[1:]}
