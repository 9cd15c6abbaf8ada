"""Adversarial: what Watch tells an agent that is none of its business (issue 15, item 11).

- An agent hears key events (rotations, compromises) only for keys it was granted
  (as agent:NAME or through a group of its certificate) when the event happened,
  on replay from the very beginning as well as live; revocations of certificates
  and agents stay public, as on a CRL.
- Resume stays exact: heartbeats carry the stream's position past the events
  withheld from it, and the agent persists it, so a restart neither repeats nor skips.
- A newly enrolled agent's first watch starts at its enrollment: its --exec does not
  run for the history before it.

And what `ps` tells any local user (item 15): the database password, given in a 0600
file, is not on the command line; given on the command line, the server says so.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from kms.v1 import admin_pb2, revocation_pb2, revocation_pb2_grpc
from tests.e2e.rig import Rig
from tests.harness import (
    ServerProcess,
    WatchProcess,
    admin_stub,
    agent,
    agent_credentials,
    assert_one_line_error,
    cluster,
    enroll,
    exe,
    query,
    run,
)

SECRET = "secret-payroll-key"


RIG = Rig(
    "kmslk",
    ("--heartbeat", "1s"),
    agents=(("nogrant", ("web",)), ("payroll", ("pay",)), ("victim", ("web",)), ("victim2", ("web",))),
)


def _last_seq(server: ServerProcess) -> int:
    return int(query(server, "SELECT MAX(seq) FROM events")[0][0] or 0)


def _raw_watch(server: ServerProcess, state: Path, after_seq: int, until_seq: int) -> list[bytes]:
    """Every message of a Watch stream opened with the agent's own certificate, from after_seq,
    up to the first heartbeat that covers until_seq (the server has passed every event by then)."""
    messages: list[bytes] = []
    with grpc.secure_channel(server.address, agent_credentials(state)) as channel:
        call = revocation_pb2_grpc.RevocationStub(channel).Watch(
            revocation_pb2.WatchRequest(after_seq=after_seq), timeout=15
        )
        for message in call:
            messages.append(message.SerializeToString())
            if message.WhichOneof("item") == "heartbeat" and message.heartbeat.current_seq >= until_seq:
                call.cancel()
                break
    return messages


def _watch_position(state: Path) -> int:
    try:
        return int(json.loads((state / "watch.json").read_text())["last_seq"])
    except FileNotFoundError:
        return 0


def test_an_agent_never_hears_the_name_of_a_key_it_is_not_granted(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    stub = admin_stub(server)
    stub.CreateKey(admin_pb2.CreateKeyRequest(name=SECRET, grants=["group:pay"]), timeout=10)
    rotate = admin_pb2.RotateKeyRequest(name=SECRET)
    stub.RotateKey(rotate, timeout=10)
    stub.RevokeKey(admin_pb2.RevokeKeyRequest(name=SECRET, version=1), timeout=10)
    stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name="victim"), timeout=10)  # public, like a CRL entry
    last = _last_seq(server)

    # Replay from the very beginning of the log, asked for explicitly with the agent's certificate.
    withheld = _raw_watch(server, root / "nogrant", 0, last)
    assert not any(SECRET.encode() in m for m in withheld)
    assert any(b"victim" in m for m in withheld)
    granted = _raw_watch(server, root / "payroll", 0, last)
    assert sum(SECRET.encode() in m for m in granted) == 2  # the rotation and the compromise

    # Live, through kms-agent watch.
    blind, seeing = WatchProcess(root / "nogrant"), WatchProcess(root / "payroll")
    try:
        for w in (blind, seeing):
            w.wait_for(lambda evs: any(e.get("agent") == "victim" for e in evs))
        stub.RotateKey(rotate, timeout=10)
        stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name="victim2"), timeout=10)
        for w in (blind, seeing):
            w.wait_for(lambda evs: any(e.get("agent") == "victim2" for e in evs))
        assert not any("key" in e for e in blind.events), blind.events
        assert SECRET not in "".join(blind.stderr)
        assert [e["kind"] for e in seeing.events if e.get("key") == SECRET] == ["rotate", "key", "rotate"]

        # Withheld events still move the agent's saved position (heartbeats carry it),
        # so a restart resumes after them instead of having them all read out again.
        stub.RotateKey(rotate, timeout=10)
        hidden = _last_seq(server)
        deadline = time.monotonic() + 10
        while _watch_position(root / "nogrant") < hidden and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _watch_position(root / "nogrant") == hidden
    finally:
        assert blind.stop() == 0
        seeing.stop()
    seen = blind.seqs()
    assert seen == sorted(set(seen))

    # Resume is exact: the restarted watcher hears the next public event, once, and nothing else.
    again = WatchProcess(root / "nogrant")
    try:
        stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name="payroll"), timeout=10)
        again.wait_for(lambda evs: any(e.get("agent") == "payroll" for e in evs))
        time.sleep(1.5)  # a heartbeat or so: nothing more may come
        assert [e.get("agent") for e in again.events] == ["payroll"]
    finally:
        assert again.stop() == 0


def test_a_new_agents_first_watch_starts_at_its_enrollment(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    # History the new agent would otherwise be read out: seven events on a key its group holds.
    server.admin("key", "create", "history", "--grant", "group:late")
    stub = admin_stub(server)
    for _ in range(7):
        stub.RotateKey(admin_pb2.RotateKeyRequest(name="history"), timeout=10)
    assert enroll(server, root / "late", server.token("late", "late")).returncode == 0
    ran = root / "exec-ran"
    watcher = WatchProcess(root / "late", "--exec", f'echo "$KMS_EVENT_SEQ" >> {ran}')
    try:
        watcher.wait_live()  # live: any replay came before that
        stub.RotateKey(admin_pb2.RotateKeyRequest(name="history"), timeout=10)
        news = _last_seq(server)
        watcher.wait_for(lambda evs: any(e["seq"] == news for e in evs))
    finally:
        assert watcher.stop() == 0
    assert ran.read_text().split() == [str(news)]
    assert watcher.seqs() == [news]

    # A machine that replaces it (--replace) does not start with the revocation of the
    # certificates it replaced, committed with its own enrollment: that is history too.
    token = server.admin(
        "token", "create", "--name", "late", "--group", "late", "--replace", "--yes"
    ).stdout.strip()
    assert enroll(server, root / "late-2", token).returncode == 0
    superseded = _last_seq(server)
    ran.unlink()
    watcher = WatchProcess(root / "late-2", "--exec", f'echo "$KMS_EVENT_SEQ" >> {ran}')
    try:
        watcher.wait_live()
        stub.RotateKey(admin_pb2.RotateKeyRequest(name="history"), timeout=10)
        news = _last_seq(server)
        assert news > superseded
        watcher.wait_for(lambda evs: any(e["seq"] == news for e in evs))
    finally:
        assert watcher.stop() == 0
    assert ran.read_text().split() == [str(news)]


DB_PASSWORD = "Pa55-only-in-a-file"  # noqa: S105 - a test role's password, in a throwaway cluster


def _visible_in_ps(pid: int) -> str:
    """What every local user sees of a process: its command line, as /proc and ps show it."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    ps = subprocess.run(
        ["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return cmdline + "\n" + ps.stdout


def _warnings(server: ServerProcess) -> list[str]:
    return [line for line in server.output().splitlines() if "holds a password" in line]


@pytest.mark.postgresql_only("a PostgreSQL role that needs its password")
def test_the_database_password_stays_out_of_ps(backend: str, tmpdir_short: Path) -> None:
    url = cluster().password_database("kms_pw", DB_PASSWORD)
    secret = tmpdir_short / "db.password"
    secret.write_text(DB_PASSWORD + "\n")
    secret.chmod(0o600)
    data = tmpdir_short / "d"

    # The role really needs its password: without one the database refuses us.
    refused = run([exe("kms-server"), "init", "--data-dir", str(data), "--database", url])
    assert_one_line_error(refused, 6, "password authentication failed")
    # A password file others can read is refused, saying so, and not read out.
    secret.chmod(0o644)
    loose = run(
        [exe("kms-server"), "init", "--data-dir", str(data), "--database", url,
         "--database-password-file", str(secret)]
    )  # fmt: skip
    assert_one_line_error(loose, 6, "readable by others", "chmod 600")
    assert DB_PASSWORD not in loose.stderr
    secret.chmod(0o600)

    # From the file (the flag; KMS_DATABASE_PASSWORD_FILE and the config key are the same setting).
    server = ServerProcess(data, database=url, extra_args=["--database-password-file", str(secret)]).start()
    try:
        assert server.proc is not None
        assert DB_PASSWORD not in _visible_in_ps(server.proc.pid)
        assert enroll(server, tmpdir_short / "a", server.token("pw-agent")).returncode == 0
        assert agent(tmpdir_short / "a", "status").returncode == 0
    finally:
        assert server.stop() == 0
    assert not _warnings(server) and DB_PASSWORD not in server.output()

    # On the command line it works, but the server warns once, without echoing it.
    scheme, rest = url.split("://", 1)
    exposed = ServerProcess(
        data,
        database=f"{scheme}://kms_pw:{DB_PASSWORD}@{rest.split('@', 1)[1]}",
        listen=server.address,
        enroll_listen=server.enroll_address,
    ).start()
    try:
        assert exposed.proc is not None
        assert DB_PASSWORD in _visible_in_ps(exposed.proc.pid)  # what the warning is about
        assert agent(tmpdir_short / "a", "status").returncode == 0
    finally:
        assert exposed.stop() == 0
    warnings = _warnings(exposed)
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "--database-password-file" in warnings[0]
    assert DB_PASSWORD not in exposed.output()
