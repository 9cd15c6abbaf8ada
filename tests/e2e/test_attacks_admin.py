"""Attacks and defects through the operators' own tools (issue 15, items 8, 9, 10, 16 and 17).

- 8: a second machine enrolling under a name that holds a valid certificate (identity
  duplication or takeover), tokens for revoked names, grants to agents nobody knows.
- 9: admin commands acting on the wrong server because they ignored --config / KMS_CONFIG.
- 10: output files renamed over symbolic links, FIFOs and devices; `-` for stdin/stdout;
  a missing output directory.
- 16: a lost enrollment reply costing the join token.
- 17: `agents list` calling revoked certificates valid; `sign` with a revoked or expired
  certificate exiting 0.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.v1 import admin_pb2, enrollment_pb2, enrollment_pb2_grpc
from server.deployment.sealing import open_sealed
from tests.harness import (
    ServerProcess,
    WatchProcess,
    _env,
    admin_stub,
    agent,
    assert_one_line_error,
    enroll,
    exe,
    query,
    run,
    short_tmpdir,
    snapshot,
)
from tests.pki import csr_der

BAD_TOKEN = "join token is invalid, expired or already used"


@pytest.fixture(scope="module")
def root(server: ServerProcess) -> Iterator[Path]:
    """Agent state dirs and files of this module; 'writer' is enrolled in group files, granted key 'files'."""
    path = short_tmpdir("kmsadm")
    assert enroll(server, path / "writer", server.token("writer", "files")).returncode == 0
    server.admin("key", "create", "files", "--grant", "group:files")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _agents(server: ServerProcess) -> dict[str, dict[str, object]]:
    return {a["name"]: a for a in json.loads(server.admin("agents", "list", "--json").stdout)}


def _agent_stdio(state: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """kms-agent with bytes on stdin and stdout (harness.agent is text, with stdin closed)."""
    return subprocess.run(
        [exe("kms-agent"), *args, "--dir", str(state)],
        input=stdin,
        capture_output=True,
        env=_env(),
        timeout=60,
        check=False,
    )


# --- 8: one name, one identity ---------------------------------------------------------------


def test_a_second_machine_cannot_enroll_beside_the_first(server: ServerProcess, root: Path) -> None:
    first, second = root / "twin-1", root / "twin-2"
    assert enroll(server, first, server.token("twin")).returncode == 0
    before = snapshot(server)
    refused = server.admin("token", "create", "--name", "twin", check=False)
    assert_one_line_error(refused, 6, "already holds a valid certificate", "--replace")
    assert snapshot(server) == before  # no token was made

    watch = WatchProcess(first)
    try:
        watch.wait_live()  # the event must come live, not by replay
        token = server.admin("token", "create", "--name", "twin", "--replace", "--yes").stdout.strip()
        assert enroll(server, second, token).returncode == 0
        # The first machine hears it at once, and its watch ends as revoked (exit 11).
        watch.wait_for(lambda evs: any(e.get("reason") == "superseded" for e in evs), timeout=10)
        assert watch.proc.wait(10) == 11
    finally:
        watch.stop()
    old_serial = format(x509.load_pem_x509_certificate((first / "agent.crt").read_bytes()).serial_number, "x")
    # Refused on its next call (the in-memory revocation map), while the new machine works.
    assert_one_line_error(agent(first, "status"), 11, old_serial, "superseded")
    assert agent(second, "status").returncode == 0
    events = [
        e for e in json.loads(server.admin("revocations", "list", "--json").stdout) if e["kind"] == "cert"
    ]
    assert [(e["serial"], e["reason"]) for e in events if e.get("agent") == "twin"] == [
        (old_serial, "superseded")
    ]
    enrolled = [r for r in query(server, "SELECT object FROM audit WHERE action='enroll'") if "twin" in r[0]]
    assert enrolled[-1][0].endswith(f"superseded:{old_serial}")


def test_a_token_for_a_revoked_name_is_refused_when_made(server: ServerProcess, root: Path) -> None:
    assert enroll(server, root / "gone", server.token("gone")).returncode == 0
    server.admin("revoke", "agent", "--yes", "gone")
    before = snapshot(server)
    assert_one_line_error(
        server.admin("token", "create", "--name", "gone", check=False), 6, "was revoked", "--allow-reenroll"
    )
    assert snapshot(server) == before
    assert server.admin("token", "create", "--name", "gone", "--allow-reenroll").returncode == 0


def test_grants_to_unknown_agents_need_a_flag(server: ServerProcess, root: Path) -> None:
    before = snapshot(server)
    refused = server.admin("key", "create", "payroll", "--grant", "agent:nobody", check=False)
    assert_one_line_error(refused, 5, "'nobody'", "--allow-unknown-grantee")
    assert_one_line_error(server.admin("key", "grant", "files", "agent:nobody", check=False), 5, "'nobody'")
    assert snapshot(server) == before

    # Groups may be empty; an agent with an unused join token is expected, not unknown.
    server.token("expected")
    quiet = server.admin("key", "create", "payroll", "--grant", "group:empty", "--grant", "agent:expected")
    assert quiet.stderr == ""
    allowed = server.admin("key", "grant", "payroll", "agent:nobody", "--allow-unknown-grantee", "--json")
    warnings = allowed.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(
        "kms-server: warning: agent 'nobody' is not enrolled"
    )
    assert "agent:nobody" in json.loads(allowed.stdout)["grants"]


# --- 9: admin commands find the server run finds -------------------------------------------------


@pytest.mark.sqlite_only("how the admin commands find the data dir: the store plays no part")
def test_admin_commands_honour_the_config_file(server: ServerProcess, backend: str) -> None:
    scratch = short_tmpdir("kmscfg")
    # A server on the default data dir of this environment: it must hear nothing.
    xdg = {"XDG_DATA_HOME": str(scratch / "xdg")}
    default = ServerProcess(scratch / "xdg" / "seed-kms").start()
    try:
        config = scratch / "server.toml"
        # Flag spellings (data-dir, cert-ttl) and underscores are both config keys.
        config.write_text(f'data-dir = "{server.data_dir}"\ncert-ttl = "2h"\n')
        ways = {
            "env": (["token", "create", "--name", "cfg-env"], {**xdg, "KMS_CONFIG": str(config)}),
            "global": (["--config", str(config), "token", "create", "--name", "cfg-global"], xdg),
            "local": (["token", "create", "--name", "cfg-local", "--config", str(config)], xdg),
        }
        for how, (args, env) in ways.items():
            result = run([exe("kms-server"), *args], env=env)
            assert result.returncode == 0, f"{how}: {result.stderr}"
        names = {r[0] for r in query(server, "SELECT name FROM join_tokens")}
        assert {"cfg-env", "cfg-global", "cfg-local"} <= names
        assert not {r[0] for r in query(default, "SELECT name FROM join_tokens")}
        # The same file, read by config show (as by run): the dash spelling counts.
        shown = run([exe("kms-server"), "config", "show", "--config", str(config)], env=xdg)
        assert json.loads(shown.stdout)["cert_ttl"] == "2h"
        both = scratch / "both.toml"
        both.write_text('cert-ttl = "2h"\ncert_ttl = "3h"\n')
        twice = run([exe("kms-server"), "config", "show", "--config", str(both)], env=xdg)
        assert_one_line_error(twice, 2, "'cert_ttl' twice")
    finally:
        default.stop()
        shutil.rmtree(scratch, ignore_errors=True)


# --- 10: output files --------------------------------------------------------------------------------


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.txt"
    path.write_bytes(b"attack at dawn\n" * 1000)
    return path


def _decrypts_to(writer: Path, ciphertext: bytes, plaintext: bytes) -> None:
    result = _agent_stdio(writer, "decrypt", "-", "-", stdin=ciphertext)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plaintext


@pytest.mark.sqlite_only("the agent's own output files: the store plays no part")
def test_a_fifo_is_written_through(server: ServerProcess, root: Path, plain: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = agent(root / "writer", "encrypt", "--key", "files", str(plain), str(fifo))
    reader.join(30)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)  # still the FIFO, not a file renamed over it
    _decrypts_to(root / "writer", got[0], plain.read_bytes())


@pytest.mark.sqlite_only("the agent's own output files: the store plays no part")
def test_a_character_device_is_written_through(root: Path, plain: Path, tmp_path: Path) -> None:
    # A private null device (as /dev/null is): renaming over it would replace the node with a file.
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    assert agent(root / "writer", "encrypt", "--key", "files", str(plain), str(null)).returncode == 0
    assert stat.S_ISCHR(null.lstat().st_mode)
    # Like /dev/stdout, a symbolic link to this process's stdout (a pipe here): written through,
    # the link left alone. (A private link: a regression must not replace the system's /dev/stdout.)
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    result = _agent_stdio(root / "writer", "encrypt", "--key", "files", str(plain), str(stdout))
    assert result.returncode == 0, result.stderr
    assert stdout.is_symlink() and os.readlink(stdout) == "/proc/self/fd/1"
    _decrypts_to(root / "writer", result.stdout, plain.read_bytes())


def _releases(server: ServerProcess) -> int:
    return len(query(server, "SELECT seq FROM audit WHERE action='key.release'"))


@pytest.mark.sqlite_only("the agent's own output files: the store plays no part")
def test_a_symlink_is_refused_unless_followed(
    server: ServerProcess, root: Path, plain: Path, tmp_path: Path
) -> None:
    target, link = tmp_path / "target.bin", tmp_path / "link.bin"
    target.write_bytes(b"precious")
    link.symlink_to(target)
    refused = agent(root / "writer", "encrypt", "--key", "files", str(plain), str(link))
    assert_one_line_error(refused, 2, "symbolic link", "--follow-symlinks")
    assert link.is_symlink() and target.read_bytes() == b"precious"
    followed = agent(root / "writer", "encrypt", "--key", "files", str(plain), str(link), "--follow-symlinks")
    assert followed.returncode == 0, followed.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link stays; its target was replaced
    _decrypts_to(root / "writer", target.read_bytes(), plain.read_bytes())
    # fetch-key --out is refused before the key is released.
    releases = _releases(server)
    assert_one_line_error(
        agent(root / "writer", "fetch-key", "files", "--out", str(link)), 2, "symbolic link"
    )
    assert _releases(server) == releases
    # Followed, the key file is remembered by its target (StateDir resolves it): a rotation rewrites the target (never
    # the link) and a compromise deletes the target, where the key is.
    fetched = agent(root / "writer", "fetch-key", "files", "--out", str(link), "--follow-symlinks")
    assert fetched.returncode == 0, fetched.stderr
    remembered = json.loads((root / "writer" / "key-files.json").read_text())
    paths = [e["path"] for e in (remembered if isinstance(remembered, list) else remembered.values())]
    assert str(target) in paths and str(link) not in paths


@pytest.mark.sqlite_only("the agent's own output files: the store plays no part")
def test_dash_is_stdin_and_stdout_everywhere(root: Path, plain: Path, tmp_path: Path) -> None:
    writer, data = root / "writer", plain.read_bytes()
    encrypted = _agent_stdio(writer, "encrypt", "--key", "files", "-", "-", stdin=data)
    assert encrypted.returncode == 0, encrypted.stderr
    _decrypts_to(writer, encrypted.stdout, data)
    key = _agent_stdio(writer, "fetch-key", "files", "--out", "-")
    assert key.returncode == 0 and len(key.stdout) == 32  # raw, as --out FILE writes it
    session = _agent_stdio(writer, "exchange", "--peer", "server", "--out", "-")
    assert session.returncode == 0 and len(session.stdout) == 32
    assert b"session_id=" in session.stderr
    signed = _agent_stdio(writer, "sign", "-", "--out", "-", stdin=data)
    assert signed.returncode == 0, signed.stderr
    (tmp_path / "sig").write_bytes(signed.stdout)
    verified = _agent_stdio(writer, "verify", "-", str(tmp_path / "sig"), "--signer", "writer", stdin=data)
    assert verified.returncode == 0, verified.stderr
    plain_copy = tmp_path / "copy.txt"
    plain_copy.write_bytes(data)
    by_sig = _agent_stdio(writer, "verify", str(plain_copy), "-", stdin=signed.stdout)
    assert by_sig.returncode == 0, by_sig.stderr
    # Piped into a reader that stops early: no traceback, the shell's code for SIGPIPE.
    proc = subprocess.Popen(
        f"{exe('kms-agent')} decrypt - - --dir {writer} | head -c 10 >/dev/null",
        shell=True,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    _, err = proc.communicate(
        _agent_stdio(writer, "encrypt", "--key", "files", "-", "-", stdin=data * 50).stdout, 60
    )
    assert b"Traceback" not in err and b"internal error" not in err


@pytest.mark.sqlite_only("the agent's own output files: the store plays no part")
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["encrypt", "--key", "files", "{plain}", "{out}"], id="encrypt"),
        pytest.param(["decrypt", "{plain}", "{out}"], id="decrypt"),
        pytest.param(["fetch-key", "files", "--out", "{out}"], id="fetch-key"),
        pytest.param(["sign", "{plain}", "--out", "{out}"], id="sign"),
        pytest.param(["exchange", "--peer", "server", "--out", "{out}"], id="exchange"),
    ],
)
def test_a_missing_output_directory_is_one_line(
    root: Path, plain: Path, tmp_path: Path, command: list[str]
) -> None:
    out = tmp_path / "no" / "such" / "dir" / "out"
    args = [a.format(plain=plain, out=out) for a in command]
    assert_one_line_error(agent(root / "writer", *args), 2, f"the directory {out.parent} does not exist")
    assert not out.parent.exists()


# --- 16: a lost reply does not cost the token ----------------------------------------------------------


def _enroll_raw(server: ServerProcess, address: str, token: str, csr: bytes) -> enrollment_pb2.EnrollResponse:
    ca = (server.data_dir / "ca.crt").read_bytes()
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca)) as channel:
        return enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(
            enrollment_pb2.EnrollRequest(join_token=token, csr_der=csr), timeout=15
        )


def test_an_enrollment_retried_with_the_same_key_gets_the_same_certificate(
    server: ServerProcess, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    token = server.token("retry-1")
    first = _enroll_raw(server, server.enroll_address, token, csr_der(rsa_key))
    again = _enroll_raw(server, server.enroll_address, token, csr_der(rsa_key))  # a new CSR, the same key
    assert again.certificate_der == first.certificate_der
    assert (again.name, list(again.groups), again.spiffe_id) == (
        first.name,
        list(first.groups),
        first.spiffe_id,
    )
    assert sum(1 for r in snapshot(server)["certificates"] if r[1] == "retry-1") == 1

    # Any other reuse is refused, in the words of an unknown token (no oracle).
    with pytest.raises(grpc.RpcError) as other_key:
        _enroll_raw(server, server.enroll_address, token, csr_der(other_rsa_key))
    assert other_key.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert BAD_TOKEN in (other_key.value.details() or "")
    serial = format(x509.load_der_x509_certificate(first.certificate_der).serial_number, "x")
    server.admin("revoke", "cert", "--yes", serial)
    with pytest.raises(grpc.RpcError) as revoked:
        _enroll_raw(server, server.enroll_address, token, csr_der(rsa_key))
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert revoked.value.details() == other_key.value.details()
    actions = [
        r[0] for r in query(server, "SELECT action FROM audit WHERE actor=?", f"token:{token.split('.')[0]}")
    ]
    # ok, repeated; the two refusals are not audited one by one (anyone can send bad tokens
    # as fast as the network allows) but counted in the per-address auth.refused record.
    assert actions == ["enroll", "enroll.repeat"]


class _ReplyLosingEnrollment(enrollment_pb2_grpc.EnrollmentServicer):
    """The server's enrollment endpoint, with its TLS identity, whose Enroll replies never arrive.

    It passes each request on to the real server, then answers UNAVAILABLE, as if the
    server had died (or the connection dropped) after issuing.
    """

    def __init__(self, server: ServerProcess) -> None:
        data = server.data_dir
        master = (data / "master.key").read_bytes()
        key = serialization.load_der_private_key(
            open_sealed(master, "server.key", (data / "server.key").read_bytes()), None
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain = (data / "server.crt").read_bytes() + (data / "ca.crt").read_bytes()
        self._real = grpc.secure_channel(
            server.enroll_address, grpc.ssl_channel_credentials((data / "ca.crt").read_bytes())
        )
        self._stub = enrollment_pb2_grpc.EnrollmentStub(self._real)
        self.issued: list[bytes] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        enrollment_pb2_grpc.add_EnrollmentServicer_to_server(self, self.server)
        self.port = self.server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, chain)])
        )
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)
        self._real.close()

    def GetCABundle(self, request, context):  # type: ignore[no-untyped-def]
        return self._stub.GetCABundle(request, timeout=10)

    def Enroll(self, request, context):  # type: ignore[no-untyped-def]
        self.issued.append(self._stub.Enroll(request, timeout=15).certificate_der)
        context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by peer")


def test_an_agent_whose_enrollment_reply_was_lost_enrolls_with_the_same_token(
    server: ServerProcess, root: Path
) -> None:
    token = server.token("lost-reply")
    relay = _ReplyLosingEnrollment(server)
    try:
        cut = enroll(server, root / "lost", token, enroll_server=f"127.0.0.1:{relay.port}")
    finally:
        relay.stop()
    assert_one_line_error(cut, 6, "cut off after the token was sent", "same token")
    assert len(relay.issued) == 1  # the server did issue
    retried = enroll(server, root / "lost", token)
    assert retried.returncode == 0, retried.stderr
    serial = format(x509.load_der_x509_certificate(relay.issued[0]).serial_number, "x")
    assert serial in retried.stdout
    assert agent(root / "lost", "status").returncode == 0
    assert not (root / "lost" / "enroll-pending.json").exists()


# --- 17: state that does not lie -------------------------------------------------------------------


def test_agents_list_says_revoked(server: ServerProcess, rsa_key: rsa.RSAPrivateKey) -> None:
    serials = {}
    for name in ("listed-1", "listed-2", "listed-3"):
        cert = _enroll_raw(
            server, server.enroll_address, server.token(name), csr_der(rsa_key)
        ).certificate_der
        serials[name] = format(x509.load_der_x509_certificate(cert).serial_number, "x")
    stub = admin_stub(server)
    stub.RevokeCertificate(admin_pb2.RevokeCertificateRequest(serial=serials["listed-1"]), timeout=10)
    stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name="listed-2"), timeout=10)
    agents = _agents(server)
    assert [agents[n]["status"] for n in ("listed-1", "listed-2", "listed-3")] == [
        "revoked",
        "revoked",
        "valid",
    ]
    assert [agents[n]["serial"] for n in ("listed-1", "listed-2", "listed-3")] == list(serials.values())
    table = server.admin("agents", "list").stdout
    assert next(line for line in table.splitlines() if line.startswith("listed-2 ")).endswith("revoked")


def test_sign_refuses_a_revoked_certificate_online_and_offline(
    server: ServerProcess, root: Path, plain: Path
) -> None:
    signer, offline = root / "signer", root / "signer-offline"
    assert enroll(server, signer, server.token("signer")).returncode == 0
    assert agent(signer, "sign", str(plain), "--out", str(plain) + ".1.sig").returncode == 0
    shutil.copytree(signer, offline)
    settings = json.loads((offline / "agent.json").read_text())
    settings["servers"] = ["127.0.0.1:9"]  # nothing listens there: no server answers
    (offline / "agent.json").write_text(json.dumps(settings))
    # Offline and not (yet) revoked: signed, and told the check was local only.
    unchecked = agent(offline, "sign", str(plain), "--out", str(plain) + ".2.sig")
    assert unchecked.returncode == 0, unchecked.stderr
    assert "local watch state only" in unchecked.stderr

    watch = WatchProcess(signer)
    try:
        watch.wait_live()
        server.admin("revoke", "agent", "--yes", "signer", "--reason", "keyCompromise")
        assert watch.proc.wait(15) == 11  # its watch heard it, and wrote it down
    finally:
        watch.stop()
    out = Path(str(plain) + ".3.sig")
    assert_one_line_error(agent(signer, "sign", str(plain), "--out", str(out)), 11, "revoked", "server says")
    assert not out.exists()
    # The offline copy learns it from the watch state the watcher left (same certificate, same state).
    shutil.copy(signer / "revoked.json", offline / "revoked.json")
    assert_one_line_error(
        agent(offline, "sign", str(plain), "--out", str(out)), 11, "local watch state", "no server answered"
    )
    assert not out.exists()


@pytest.mark.sqlite_only("the agent checks its certificate's dates itself; the store plays no part")
def test_an_expired_certificate_is_listed_expired_and_does_not_sign(
    backend: str, plain: Path, tmp_path: Path
) -> None:
    short = ServerProcess(short_tmpdir("kmsexp") / "d", extra_args=["--cert-ttl", "10s"]).start()
    try:
        state = tmp_path / "brief"
        assert enroll(short, state, short.token("brief")).returncode == 0
        expires = x509.load_pem_x509_certificate((state / "agent.crt").read_bytes()).not_valid_after_utc
        time.sleep(max(0.0, expires.timestamp() - time.time()) + 0.5)
        assert _agents(short)["brief"]["status"] == "expired"
        assert_one_line_error(agent(state, "sign", str(plain)), 3, "expired", "checked locally")
        assert not Path(str(plain) + ".sig").exists()
    finally:
        short.stop()
        shutil.rmtree(short.data_dir.parent, ignore_errors=True)
