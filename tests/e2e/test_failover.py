"""Story: an agent given several server addresses fails over between them.

The agent's side does not depend on the store, so most of this runs on SQLite
only, with stand-ins for replicas: an address where nothing listens (connection
refused, as a replica that is down), one that accepts and never answers (a host
that drops packets), a listener that only counts connections (to prove an
address was never tried), and one server stopped and started again on another
address of the list, on the same data directory (the same CA and event log,
as replicas share them). On PostgreSQL, the watch story runs against two true
replicas of one database.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms.v1 import admin_pb2
from tests.harness import (
    ServerProcess,
    WatchProcess,
    admin_stub,
    agent,
    assert_one_line_error,
    exe,
    short_tmpdir,
)

SERVER_ARGS = ["--heartbeat", "1s"]
AGENT_SIDE = pytest.mark.sqlite_only("agent-side failover: the store behind the server does not matter")


class _Refusing:
    """A port that is bound but not listening: every connection is refused, as to a replica that is down."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()


class _Counting:
    """A port that accepts TCP connections and counts them (it never speaks TLS)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()


class _Silent:
    """A port whose connections the kernel accepts but nobody answers, as a host that drops packets."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)  # never accepted: TLS never starts
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _enroll(server: ServerProcess, state: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return agent(
        state,
        "enroll",
        *args,
        "--token",
        server.token(name, "web"),
        "--ca-fingerprint",
        server.fingerprint,
    )


def _enroll_direct(server: ServerProcess, state: Path, name: str) -> None:
    """Enrolls name at state through the live server's own two addresses."""
    result = _enroll(
        server, state, name, "--server", server.address, "--enroll-server", server.enroll_address
    )
    assert result.returncode == 0, result.stderr


def _set_servers(state: Path, servers: list[str]) -> None:
    settings = json.loads((state / "agent.json").read_text())
    settings["servers"] = servers
    (state / "agent.json").write_text(json.dumps(settings))


@pytest.fixture(scope="module")
def rig(backend: str) -> Iterator[tuple[ServerProcess, Path, _Refusing, _Refusing]]:
    root = short_tmpdir("kmsfo")
    server = ServerProcess(root / "d").start()
    dead, dead_enroll = _Refusing(), _Refusing()
    try:
        server.admin("key", "create", "app", "--grant", "group:web")
        yield server, root, dead, dead_enroll
    finally:
        dead.close()
        dead_enroll.close()
        code = server.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0, server.output()


@AGENT_SIDE
def test_a_dead_first_address_is_skipped_by_every_command(
    rig: tuple[ServerProcess, Path, _Refusing, _Refusing],
) -> None:
    server, root, dead, dead_enroll = rig
    a, b = root / "a", root / "b"
    # Comma-separated in the environment ...
    result = agent(
        a,
        "enroll",
        env={
            "KMS_SERVER": f"{dead.address},{server.address}",
            "KMS_ENROLL_SERVER": f"{dead_enroll.address},{server.enroll_address}",
            "KMS_JOIN_TOKEN": server.token("a", "web"),
            "KMS_CA_FINGERPRINT": server.fingerprint,
        },
    )
    assert result.returncode == 0, result.stderr
    assert "enrolled as a" in result.stdout and result.stderr == ""
    # ... or a repeated flag.
    result = _enroll(
        server,
        b,
        "b",
        "--server",
        dead.address,
        "--server",
        server.address,
        "--enroll-server",
        f"{dead_enroll.address},{server.enroll_address}",
    )
    assert result.returncode == 0, result.stderr

    for state in (a, b):
        settings = json.loads((state / "agent.json").read_text())
        assert settings["servers"] == [dead.address, server.address]
        assert settings["enroll_servers"] == [dead_enroll.address, server.enroll_address]
        assert "server" not in settings and "enroll_server" not in settings

    status = agent(a, "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["server"] == server.address and shown["servers"] == [dead.address, server.address]
    text = agent(a, "status")
    assert f"servers:   {dead.address}, {server.address}" in text.stdout
    assert f"server:    {server.address} (verified over mTLS)" in text.stdout

    fetched = agent(a, "fetch-key", "app", "--format", "hex")
    assert fetched.returncode == 0 and len(fetched.stdout.strip()) == 64, fetched.stderr
    assert agent(a, "check", "--cert", str(b / "agent.crt")).returncode == 0
    renewed = agent(a, "renew")
    assert renewed.returncode == 0, renewed.stderr
    assert json.loads((a / "agent.json").read_text())["servers"] == [dead.address, server.address]
    exchanged = agent(a, "exchange", "--peer", "server", "--json")
    assert exchanged.returncode == 0, exchanged.stderr

    # sign/verify (verify asks the server for revocation status).
    doc = root / "doc.txt"
    doc.write_text("hello\n")
    assert agent(a, "sign", str(doc)).returncode == 0
    verified = agent(b, "verify", str(doc), str(doc) + ".sig", "--signer", "a")
    assert verified.returncode == 0, verified.stderr

    # Agent to agent: both listen and initiate past the dead address.
    listener = subprocess.Popen(
        [exe("kms-agent"), "listen", "--once", "--json", "--dir", str(b), "--out-dir", str(root / "keys")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        result = agent(a, "exchange", "--peer", "b", "--json")
        while "not listening" in result.stderr and time.monotonic() < deadline:
            time.sleep(0.3)
            result = agent(a, "exchange", "--peer", "b", "--json")
        assert result.returncode == 0, result.stderr
        out, err = listener.communicate(timeout=20)
        assert listener.returncode == 0, err
        assert json.loads(out)["session_id"] == json.loads(result.stdout)["session_id"]
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


@AGENT_SIDE
def test_a_silent_address_is_passed_after_the_deadline(
    rig: tuple[ServerProcess, Path, _Refusing, _Refusing], tmpdir_short: Path
) -> None:
    """No refusal, no answer: a deadline that passes before any connection moves on too."""
    server, _, _, _ = rig
    silent = _Silent()
    try:
        state = tmpdir_short / "s"
        _enroll_direct(server, state, "s")
        _set_servers(state, [silent.address, server.address])
        started = time.monotonic()
        fetched = agent(state, "fetch-key", "app", "--timeout", "1")
        assert fetched.returncode == 0, fetched.stderr
        exchanged = agent(state, "exchange", "--peer", "server", "--handshake-timeout", "1")
        assert exchanged.returncode == 0, exchanged.stderr
        assert time.monotonic() - started < 15
        _set_servers(state, [silent.address])
        assert_one_line_error(
            agent(state, "fetch-key", "app", "--timeout", "1"), 8, "no connection within 1s"
        )
    finally:
        silent.close()


@AGENT_SIDE
def test_when_every_address_is_down_one_line_names_each(
    rig: tuple[ServerProcess, Path, _Refusing, _Refusing], tmpdir_short: Path
) -> None:
    server, root, dead, dead_enroll = rig
    other = _Refusing()
    try:
        result = _enroll(
            server,
            tmpdir_short / "x",
            "x",
            "--server",
            server.address,
            "--enroll-server",
            f"{dead_enroll.address},{other.address}",
        )
        assert_one_line_error(result, 8, "any of", dead_enroll.address, other.address)
        assert not (tmpdir_short / "x" / "agent.json").exists()

        state = tmpdir_short / "c"
        _enroll_direct(server, state, "c")
        _set_servers(state, [dead.address, other.address])
        for args in (
            ["fetch-key", "app"],
            ["status"],
            ["check", "--serial", "1"],
            ["exchange", "--peer", "server"],
        ):
            assert_one_line_error(
                agent(state, *args), 8, "cannot reach kms-server at any of", dead.address, other.address
            )
    finally:
        other.close()


@AGENT_SIDE
def test_a_final_answer_is_not_asked_of_the_next_address(
    rig: tuple[ServerProcess, Path, _Refusing, _Refusing], tmpdir_short: Path
) -> None:
    server, root, dead, _ = rig
    counting = _Counting()
    try:
        enroll_at = f"{server.enroll_address},{counting.address}"
        # A refused token is final: join tokens are single-use, another replica must not see it.
        bad_token = agent(
            tmpdir_short / "t",
            "enroll",
            "--server",
            server.address,
            "--enroll-server",
            enroll_at,
            "--token",
            server.token("t").split(".")[0] + "." + "A" * 43,  # a known id, a wrong secret
            "--ca-fingerprint",
            server.fingerprint,
        )
        assert_one_line_error(bad_token, 3)
        # So is a CA that does not match the pin.
        wrong_pin = agent(
            tmpdir_short / "t",
            "enroll",
            "--server",
            server.address,
            "--enroll-server",
            enroll_at,
            "--token",
            server.token("t"),
            "--ca-fingerprint",
            "sha256:" + "00" * 32,
        )
        assert_one_line_error(wrong_pin, 3, "does not match")
        assert counting.connections == 0

        # A used token, retried by hand with the dead address first: refused (not 'unavailable').
        state = tmpdir_short / "p"
        token = server.token("p")
        args = ["--server", server.address, "--enroll-server", server.enroll_address]
        assert (
            agent(state, "enroll", *args, "--token", token, "--ca-fingerprint", server.fingerprint).returncode
            == 0
        )
        again = agent(
            tmpdir_short / "q",
            "enroll",
            "--server",
            server.address,
            "--enroll-server",
            f"{dead.address},{server.enroll_address}",
            "--token",
            token,
            "--ca-fingerprint",
            server.fingerprint,
        )
        assert_one_line_error(again, 3)

        # PERMISSION_DENIED, FAILED_PRECONDITION: the deployment's answer, not a reason to try elsewhere.
        _set_servers(state, [server.address, counting.address])
        assert_one_line_error(agent(state, "fetch-key", "app"), 4)  # p is in no group
        # (An unknown agent is answered as one not listening: names cannot be probed.)
        assert_one_line_error(agent(state, "exchange", "--peer", "nobody"), 6, "not listening")
        assert counting.connections == 0
    finally:
        counting.close()


@AGENT_SIDE
@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--server", "127.0.0.1:1,,127.0.0.1:2"], {}, "empty address"),
        (["--server", "127.0.0.1:1", "--server", "127.0.0.1:1"], {}, "twice"),
        (["--server", "nohost"], {}, "HOST:PORT"),
        ([], {"KMS_SERVER": "127.0.0.1:1,nohost"}, "KMS_SERVER"),
        (["--server", "127.0.0.1:1", "--enroll-server", "127.0.0.1:x"], {}, "--enroll-server"),
        ([], {"KMS_SERVER": "127.0.0.1:1", "KMS_ENROLL_SERVER": "127.0.0.1:2,"}, "KMS_ENROLL_SERVER"),
    ],
    ids=["empty-entry", "repeated", "no-port", "env-bad", "enroll-bad", "env-enroll-trailing-comma"],
)
def test_bad_address_lists_are_one_line(
    tmpdir_short: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = agent(
        tmpdir_short / "z",
        "enroll",
        *args,
        "--token",
        "x.y",
        "--ca-fingerprint",
        "sha256:" + "00" * 32,
        env=env,
    )
    assert_one_line_error(result, 2, needle)


@AGENT_SIDE
def test_an_older_agents_single_address_state_still_works(
    rig: tuple[ServerProcess, Path, _Refusing, _Refusing], tmpdir_short: Path
) -> None:
    server, _, _, _ = rig
    state = tmpdir_short / "old"
    _enroll_direct(server, state, "old")
    settings = json.loads((state / "agent.json").read_text())
    old = {k: v for k, v in settings.items() if k not in ("servers", "enroll_servers")}
    old |= {"server": server.address, "enroll_server": server.enroll_address}
    (state / "agent.json").write_text(json.dumps(old, indent=2))

    shown = agent(state, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["servers"] == [server.address]
    assert agent(state, "fetch-key", "app").returncode == 0
    assert agent(state, "renew").returncode == 0  # saves the identity: the new form
    written = json.loads((state / "agent.json").read_text())
    assert written["servers"] == [server.address] and written["enroll_servers"] == [server.enroll_address]
    assert "server" not in written


def _revoke(server: ServerProcess, key: str, count: int) -> list[int]:
    """count events (key versions compromised, each rotating the key); their sequence numbers."""
    stub = admin_stub(server)
    stub.CreateKey(admin_pb2.CreateKeyRequest(name=key, grants=[]), timeout=10)
    return [
        stub.RevokeKey(admin_pb2.RevokeKeyRequest(name=key, version=v), timeout=10).event.seq
        for v in range(1, count + 1)
    ]


class _Followers:
    """Two agents enrolled with the same address list: one runs kms-agent watch, one kms-agent run.

    The second keeps a key file (fetch-key --out) that kms-agent run re-fetches after each rotation.
    """

    def __init__(
        self, root: Path, server: ServerProcess, servers: list[str], enroll_servers: list[str]
    ) -> None:
        self.root = root
        for name in ("w", "r"):
            result = _enroll(
                server,
                root / name,
                name,
                "--server",
                ",".join(servers),
                "--enroll-server",
                ",".join(enroll_servers),
            )
            assert result.returncode == 0, result.stderr
        server.admin("key", "create", "app", "--grant", "group:web")
        self.key_file = root / "app.hex"
        fetched = agent(root / "r", "fetch-key", "app", "--out", str(self.key_file), "--format", "hex")
        assert fetched.returncode == 0, fetched.stderr
        self.made: list[int] = []
        self.rotations = 0
        self.watcher = WatchProcess(root / "w")
        self.daemon = subprocess.Popen(
            [exe("kms-agent"), "run", "--no-listen", "--dir", str(root / "r")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def events_through(self, server: ServerProcess, key: str, *, rotate: bool = True) -> None:
        """Three revocations and a rotation of app through server; waits until both agents acted on them."""
        stub = admin_stub(server)
        stub.CreateKey(admin_pb2.CreateKeyRequest(name=key, grants=["group:web"]), timeout=10)
        self.made += [
            stub.RevokeKey(admin_pb2.RevokeKeyRequest(name=key, version=v), timeout=10).event.seq
            for v in (1, 2, 3)
        ]
        if rotate:
            server.admin("key", "rotate", "app")
            self.rotations += 1
        self.watcher.wait_for(lambda evs: len(evs) >= len(self.made) + self.rotations, timeout=40)
        if rotate:  # kms-agent run heard the rotation and re-fetched its key file
            current = agent(self.root / "w", "fetch-key", "app", "--format", "hex").stdout
            deadline = time.monotonic() + 30
            while self.key_file.read_text() != current and time.monotonic() < deadline:
                time.sleep(0.3)
            assert self.key_file.read_text() == current, "kms-agent run did not re-fetch app"

    def check_and_stop(self, *moved_to: str) -> None:
        """Every event once, in order (no gap, no repeat); the watcher moved to each of moved_to."""
        time.sleep(1.5)  # a heartbeat or two: nothing more may come
        assert [e["seq"] for e in self.watcher.events if e["kind"] == "key"] == self.made
        seqs = self.watcher.seqs()
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        log = "".join(self.watcher.stderr)
        for address in moved_to:
            assert f"next: {address}" in log, log
        assert self.watcher.stop() == 0
        self.daemon.terminate()
        assert self.daemon.wait(20) == 0, self.daemon.stderr.read() if self.daemon.stderr else ""

    def kill(self) -> None:
        for proc in (self.watcher.proc, self.daemon):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.sqlite_only("true replicas need PostgreSQL: test_watch_and_run_follow_true_replicas")
def test_watch_and_run_move_to_the_next_address_and_resume(tmpdir_short: Path) -> None:
    """One server killed and back on the second address, then stopped and back on the first."""
    data = tmpdir_short / "d"
    first = ServerProcess(data, extra_args=SERVER_ARGS).start()
    second_address = _free_address()
    server = first
    followers: _Followers | None = None
    try:
        followers = _Followers(tmpdir_short, server, [first.address, second_address], [first.enroll_address])
        followers.events_through(server, "k1", rotate=False)
        # Killed outright; back on the second address (same data: same CA, same event log).
        server.kill()
        server = ServerProcess(data, extra_args=SERVER_ARGS, listen=second_address).start()
        followers.events_through(server, "k2")  # made while the agents are away, or just back
        # Stopped cleanly; back on the first address.
        assert server.stop() == 0
        server = ServerProcess(
            data, extra_args=SERVER_ARGS, listen=first.address, enroll_listen=first.enroll_address
        ).start()
        followers.events_through(server, "k3")
        followers.check_and_stop(second_address, first.address)
    finally:
        if followers is not None:
            followers.kill()
        server.kill()


@pytest.mark.postgresql_only("replicas share one PostgreSQL database")
def test_watch_and_run_follow_true_replicas(tmpdir_short: Path) -> None:
    """Two replicas of one database: one is killed, agents move to the other; it comes back, the other stops."""
    args = [*SERVER_ARGS, "--master-key-file", str(tmpdir_short / "master.key")]
    one = ServerProcess(tmpdir_short / "d1", extra_args=args).start()
    two = ServerProcess(tmpdir_short / "d2", extra_args=args, database=one.database).start()
    servers = [one, two]
    followers: _Followers | None = None
    try:
        assert two.fingerprint == one.fingerprint
        followers = _Followers(
            tmpdir_short, one, [one.address, two.address], [one.enroll_address, two.enroll_address]
        )
        followers.events_through(one, "k1", rotate=False)

        one.kill()
        followers.events_through(two, "k2")
        # With the first replica gone, a new agent enrolls through the second, and commands fail over.
        late = tmpdir_short / "late"
        result = _enroll(
            two,
            late,
            "late",
            "--server",
            f"{one.address},{two.address}",
            "--enroll-server",
            f"{one.enroll_address},{two.enroll_address}",
        )
        assert result.returncode == 0, result.stderr
        assert agent(late, "fetch-key", "app").returncode == 0

        one = ServerProcess(
            tmpdir_short / "d1",
            extra_args=args,
            database=two.database,
            listen=one.address,
            enroll_listen=one.enroll_address,
        ).start()
        servers.append(one)
        assert two.stop() == 0
        followers.events_through(one, "k3")
        followers.check_and_stop(two.address, one.address)
    finally:
        if followers is not None:
            followers.kill()
        for server in servers:
            server.kill()
