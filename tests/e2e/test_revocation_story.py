"""Story: agents watching revocations, enforcement, resume, crash safety, CRL and OCSP."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from kms.v1 import admin_pb2, revocation_pb2, revocation_pb2_grpc
from tests.e2e.rig import Rig
from tests.harness import (
    ServerProcess,
    WatchProcess,
    admin_stub,
    agent,
    agent_credentials,
    assert_one_line_error,
    enroll,
    exe,
    openssl_ocsp,
    run,
    snapshot,
)

# The guarantees must hold across worker processes too (issue 20).
pytestmark = pytest.mark.every_worker_setting

SERVER_ARGS = [
    "--heartbeat", "1s", "--http-listen", "127.0.0.1:0", "--watch-buffer", "16",
    "--max-streams-per-identity", "2000",  # the 1,000-stream test runs them all under one certificate
]  # fmt: skip


RIG = Rig(
    "kmsrv",
    tuple(SERVER_ARGS),
    agents=tuple((name, ("web",)) for name in ("a", "b", "c", "d", "warm")),
    keys=(("app", "group:web"),),
)


def _serial(state: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(state / "agent.crt"), "-noout", "-serial"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split("=")[1].lower().lstrip("0")


def _warm_up(server: ServerProcess, watchers: list[WatchProcess], key: str) -> None:
    """Makes one event (a fresh key version compromised) and waits until every watcher printed it.

    The key is granted to group web (every watcher's): key events go only to its grantees."""
    server.admin("key", "create", key, "--grant", "group:web")
    server.admin("revoke", "key", "--yes", key, "--version", "1")
    for w in watchers:
        w.wait_for(lambda events: any(e.get("key") == key for e in events))


def test_three_watchers_hear_agent_b_revoked_and_key_files_go(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    key_file = root / "app-v1.key"
    assert agent(root / "a", "fetch-key", "app", "--out", str(key_file)).returncode == 0
    watchers = {n: WatchProcess(root / n) for n in ("a", "b", "c")}
    try:
        _warm_up(server, list(watchers.values()), "warm-1")
        b_serial = _serial(root / "b")
        done = server.admin("revoke", "agent", "--yes", "b", "--reason", "keyCompromise", "--json")
        event = json.loads(done.stdout)
        assert event["kind"] == "agent" and event["serial"] == b_serial and not event["already_revoked"]

        for name in ("a", "c"):
            watchers[name].wait_for(lambda evs: any(e.get("agent") == "b" for e in evs))
        # B hears it too, says so, and exits with the distinct code.
        assert watchers["b"].proc.wait(10) == 11
        assert any(e.get("agent") == "b" for e in watchers["b"].events)
        # One line: what was revoked, which certificate, what to do.
        deadline = time.monotonic() + 5  # the stderr reader may be a moment behind the exit
        while "kms-agent: error:" not in "".join(watchers["b"].stderr) and time.monotonic() < deadline:
            time.sleep(0.05)
        said = [line for line in "".join(watchers["b"].stderr).splitlines() if "kms-agent: error:" in line]
        assert len(said) == 1 and "this agent (b) was revoked (keyCompromise)" in said[0], said
        assert b_serial in said[0] and "--allow-reenroll" in said[0] and "kms-agent enroll" in said[0]
        # B's next call is refused.
        assert_one_line_error(agent(root / "b", "status"), 11, "was revoked")
        assert_one_line_error(agent(root / "b", "fetch-key", "app"), 11, "was revoked")

        # Revoking again is not an error and makes no new event.
        before = len(snapshot(server)["events"])
        again = json.loads(server.admin("revoke", "agent", "--yes", "b", "--json").stdout)
        assert again["already_revoked"] and again["seq"] == event["seq"]
        assert len(snapshot(server)["events"]) == before

        # A compromised key version: A's key file is deleted by its watcher.
        assert key_file.exists()
        server.admin("revoke", "key", "--yes", "app", "--version", "1", "--reason", "keyCompromise")
        watchers["a"].wait_for(lambda evs: any(e.get("key") == "app" for e in evs))
        assert not key_file.exists()
        assert_one_line_error(agent(root / "a", "fetch-key", "app", "--version", "1"), 6, "compromised")
        assert json.loads(agent(root / "a", "fetch-key", "app", "--json").stdout)["version"] == 2
        # Every watcher saw every event once, in order.
        for name in ("a", "c"):
            seqs = watchers[name].seqs()
            assert seqs == sorted(set(seqs))
    finally:
        for w in watchers.values():
            w.stop()


def test_revoked_agent_reenrolls_only_when_allowed(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    assert enroll(server, root / "r1", server.token("reborn", "web")).returncode == 0
    # A token made before the revocation (it must replace the valid certificate then).
    early = server.admin(
        "token", "create", "--name", "reborn", "--group", "web", "--replace", "--yes"
    ).stdout.strip()
    server.admin("revoke", "agent", "--yes", "reborn")
    # After it, a token for the name is refused at once, not at enrollment.
    assert_one_line_error(
        server.admin("token", "create", "--name", "reborn", check=False), 6, "--allow-reenroll"
    )
    before = snapshot(server)
    assert_one_line_error(enroll(server, root / "r2", early), 4, "allow-reenroll")
    assert snapshot(server) == before  # the token was not consumed
    allowed = server.admin("token", "create", "--name", "reborn", "--allow-reenroll").stdout.strip()
    assert enroll(server, root / "r2", allowed).returncode == 0
    assert agent(root / "r2", "status").returncode == 0


def test_watch_resumes_with_exactly_the_missed_events(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    first = WatchProcess(root / "d")
    _warm_up(server, [first], "warm-2")
    assert first.stop() == 0
    seen = first.seqs()

    stub = admin_stub(server)
    stub.CreateKey(admin_pb2.CreateKeyRequest(name="churn", grants=["group:web"]), timeout=10)
    made = []
    for version in range(1, 51):  # each revocation of the current version rotates to the next
        resp = stub.RevokeKey(admin_pb2.RevokeKeyRequest(name="churn", version=version), timeout=10)
        made.append(resp.event.seq)
    # A plain rotation is on the feed too (agents refresh key files), but it is no revocation.
    stub.RotateKey(admin_pb2.RotateKeyRequest(name="churn"), timeout=10)
    listed = json.loads(server.admin("revocations", "list", "--json").stdout)
    assert {e["kind"] for e in listed} <= {"cert", "agent", "key"} and made[-1] == listed[-1]["seq"]

    second = WatchProcess(root / "d")
    try:
        second.wait_for(lambda evs: len(evs) >= 51)
        time.sleep(1.5)  # a heartbeat or two: nothing more may come
        assert second.seqs()[:-1] == made
        rotated = second.events[-1]
        assert (rotated["kind"], rotated["key"], rotated["version"]) == ("rotate", "churn", 52)
        assert rotated["seq"] > made[-1]
        assert not set(second.seqs()) & set(seen)
    finally:
        assert second.stop() == 0


def test_watch_exec_runs_per_event_with_the_event_in_the_environment(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    log = root / "exec.log"
    watcher = WatchProcess(
        root / "c",
        "--exec",
        f'echo "$KMS_EVENT_SEQ $KMS_EVENT_KIND $KMS_EVENT_KEY $KMS_EVENT_VERSION" >> {log}',
    )
    try:
        _warm_up(server, [watcher], "warm-exec")
        seq = next(e["seq"] for e in watcher.events if e.get("key") == "warm-exec")
        assert f"{seq} key warm-exec 1" in log.read_text().splitlines()
    finally:
        assert watcher.stop() == 0


def test_watch_bad_after_seq(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    state = root / "c"
    creds = agent_credentials(state)
    with grpc.secure_channel(server.address, creds) as ch:
        stub = revocation_pb2_grpc.RevocationStub(ch)
        for after in (-1, 10**9):
            with pytest.raises(grpc.RpcError) as info:
                next(iter(stub.Watch(revocation_pb2.WatchRequest(after_seq=after), timeout=10)))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "args, code, needle",
    [
        pytest.param(
            ["revoke", "cert", "--yes", "abcdef0123"], 5, "no certificate with serial", id="unknown-serial"
        ),
        pytest.param(["revoke", "cert", "--yes", "not-hex"], 2, "hexadecimal", id="bad-serial"),
        pytest.param(["revoke", "agent", "--yes", "nobody"], 5, "no agent named", id="unknown-agent"),
        pytest.param(
            ["revoke", "key", "--yes", "nokey", "--version", "1"], 5, "has no version", id="unknown-key"
        ),
        pytest.param(
            ["revoke", "key", "--yes", "app", "--version", "0"], 2, "out of range", id="version-zero"
        ),
        pytest.param(
            ["revoke", "agent", "--yes", "a", "--reason", "becauseISaidSo"],
            2,
            "keyCompromise",
            id="bad-reason",
        ),
        # Certificates and agents can be held (tests/e2e/test_hold_story.py); key versions cannot.
        pytest.param(
            ["revoke", "key", "app", "--version", "1", "--reason", "certificateHold"],
            2,
            "is not one of",
            id="hold",
        ),
    ],
)
def test_revoke_bad_input_changes_nothing(
    rig: tuple[ServerProcess, Path], args: list[str], code: int, needle: str
) -> None:
    server, _ = rig
    before = snapshot(server)
    assert_one_line_error(server.admin(*args, check=False), code, needle)
    assert snapshot(server) == before


def test_check_reports_status(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    good = agent(root / "c", "check", "--cert", str(root / "c" / "agent.crt"), "--json")
    assert good.returncode == 0 and json.loads(good.stdout)["status"] == "good"
    revoked = agent(root / "c", "check", "--serial", _serial(root / "b"))
    assert revoked.returncode == 11 and "status=revoked" in revoked.stdout
    unknown = agent(root / "c", "check", "--serial", "123456789abcdef")
    assert unknown.returncode == 5 and "status=unknown" in unknown.stdout
    listed = json.loads(server.admin("revocations", "list", "--json").stdout)
    assert [e["seq"] for e in listed] == sorted(e["seq"] for e in listed)


def test_crl_and_ocsp_agree_with_openssl(rig: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, root = rig
    http = server.fields["http-address"]
    good, revoked = root / "c" / "agent.crt", root / "b" / "agent.crt"
    ca = server.data_dir / "ca.crt"
    crl_der = tmp_path / "crl.der"
    run(["curl", "-sf", "-o", str(crl_der), f"http://{http}/crl"])
    crl_pem = tmp_path / "crl.pem"
    assert (
        run(["openssl", "crl", "-inform", "DER", "-in", str(crl_der), "-out", str(crl_pem)]).returncode == 0
    )
    # The README's commands, word for word: the CRL as a file, or fetched from the certificate's CDP.
    for how in (["-CRLfile", str(crl_pem)], ["-crl_download"]):
        ok = run(["openssl", "verify", "-crl_check", *how, "-CAfile", str(ca), str(good)])
        assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
        bad = run(["openssl", "verify", "-crl_check", *how, "-CAfile", str(ca), str(revoked)])
        assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr
    # No entry is dated after the CRL's own thisUpdate (RFC 5280 §5.1.2.4), backdated 60 s at most.
    crl = x509.load_der_x509_crl(crl_der.read_bytes())
    assert len(crl) >= 1 and all(e.revocation_date_utc <= crl.last_update_utc for e in crl)
    assert 0 <= (datetime.now(UTC) - crl.last_update_utc).total_seconds() < 90
    assert crl.next_update_utc is not None and crl.next_update_utc - crl.last_update_utc == timedelta(
        hours=24
    )
    # The same CRL over gRPC.
    with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca.read_bytes())) as ch:
        der = (
            revocation_pb2_grpc.RevocationStub(ch).GetCRL(revocation_pb2.GetCRLRequest(), timeout=10).crl_der
        )
    assert der[:2] == crl_der.read_bytes()[:2]
    # RFC 5280 lint of the CRL.
    lint = run([exe("lint_crl"), "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(crl_pem)])
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout
    # OCSP, as openssl asks it.
    for cert, expected in ((good, ": good"), (revoked, ": revoked")):
        out = openssl_ocsp(ca, cert, http)
        assert "Response verify OK" in out.stdout + out.stderr and expected in out.stdout, (
            out.stdout + out.stderr
        )


def test_thousand_watch_streams_each_get_the_event_once(rig: tuple[ServerProcess, Path]) -> None:
    """Counts deliveries, not time: 1,000 concurrent streams, one event, 1,000 receipts."""
    import asyncio

    server, root = rig
    state = root / "c"
    creds = agent_credentials(state)
    streams, channels = 1000, 10
    server.admin("key", "create", "fanout", "--grant", "group:web")

    async def body() -> list[int]:
        chans = [grpc.aio.secure_channel(server.address, creds) for _ in range(channels)]
        start = await asyncio.to_thread(_last_seq, server)
        ready = asyncio.Semaphore(0)
        received = [0] * streams

        async def one(i: int) -> None:
            stub = revocation_pb2_grpc.RevocationStub(chans[i % channels])
            call = stub.Watch(revocation_pb2.WatchRequest(after_seq=start))
            signalled = False
            async for msg in call:
                if not signalled:  # first heartbeat: the stream is open and subscribed
                    signalled = True
                    ready.release()
                if msg.WhichOneof("item") == "event":
                    received[i] += 1
                    call.cancel()
                    return

        tasks = [asyncio.create_task(one(i)) for i in range(streams)]
        for _ in range(streams):
            await asyncio.wait_for(ready.acquire(), 60)
        await asyncio.to_thread(server.admin, "revoke", "key", "--yes", "fanout", "--version", "1")
        done, pending = await asyncio.wait(tasks, timeout=60)
        for t in pending:
            t.cancel()
        for c in chans:
            await c.close()
        return received

    received = asyncio.run(body())
    assert sum(received) == streams and set(received) == {1}


def test_stuck_watcher_is_dropped_without_slowing_others(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    state = root / "c"
    creds = agent_credentials(state)
    # A client that reads nothing, with a tiny receive window so the server's sends back up at once.
    stuck_channel = grpc.secure_channel(
        server.address, creds, options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    )
    last = _last_seq(server)
    stuck = revocation_pb2_grpc.RevocationStub(stuck_channel).Watch(
        revocation_pb2.WatchRequest(after_seq=last)
    )
    healthy = WatchProcess(root / "d")
    try:
        _warm_up(server, [healthy], "warm-3")
        rss_before = _rss_kib(server)
        stub = admin_stub(server)
        stub.CreateKey(admin_pb2.CreateKeyRequest(name="flood", grants=["group:web"]), timeout=10)
        for version in range(1, 201):
            stub.RevokeKey(admin_pb2.RevokeKeyRequest(name="flood", version=version), timeout=10)
        healthy.wait_for(lambda evs: sum(1 for e in evs if e.get("key") == "flood") == 200)
        # The stuck stream was dropped: reading it now yields what was in flight, then an error.
        got, error, details = 0, None, ""
        try:
            for _ in stuck:
                got += 1
        except grpc.RpcError as exc:
            error, details = exc.code(), exc.details()
        assert error in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED), (error, details)
        assert got < 200
        assert "dropped a watcher that fell behind" in server.output()
        assert _rss_kib(server) - rss_before < 64 * 1024
    finally:
        healthy.stop()
        stuck_channel.close()


def _last_seq(server: ServerProcess) -> int:
    events = json.loads(server.admin("revocations", "list", "--json").stdout)
    return max((e["seq"] for e in events), default=0)


def _rss_kib(server: ServerProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_sigkill_mid_stream_loses_nothing_reported_done(tmpdir_short: Path) -> None:
    server = ServerProcess(tmpdir_short / "d", extra_args=["--heartbeat", "1s"]).start()
    assert enroll(server, tmpdir_short / "w", server.token("w")).returncode == 0
    server.admin("key", "create", "crash", "--grant", "agent:w")
    watcher = WatchProcess(tmpdir_short / "w")
    done: list[int] = []
    stop = threading.Event()

    def revoke_forever() -> None:
        stub = admin_stub(server)
        version = 1
        while not stop.is_set():
            try:
                resp = stub.RevokeKey(admin_pb2.RevokeKeyRequest(name="crash", version=version), timeout=5)
            except grpc.RpcError:
                return  # the server died under us; this one was not reported done
            done.append(resp.event.seq)
            version += 1

    thread = threading.Thread(target=revoke_forever)
    try:
        thread.start()
        watcher.wait_for(lambda evs: len(evs) >= 20)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        stop.set()
        thread.join(10)
        restarted = ServerProcess(
            server.data_dir,
            extra_args=["--heartbeat", "1s"],
            listen=server.address,
            enroll_listen=server.enroll_address,
        ).start()
        try:
            logged = [e["seq"] for e in json.loads(restarted.admin("revocations", "list", "--json").stdout)]
            assert set(done) <= set(logged)
            assert logged == list(range(1, len(logged) + 1))  # no hole in the log
            # The watcher reconnects by itself and ends up with the whole log, once, in order.
            watcher.wait_for(lambda evs: len(evs) >= len(logged), timeout=40)
            assert watcher.seqs() == logged
        finally:
            assert watcher.stop() == 0
            assert restarted.stop() == 0
    finally:
        stop.set()
        server.kill()
