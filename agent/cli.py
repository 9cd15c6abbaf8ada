"""kms-agent: enroll with kms-server, then prove the identity over mutual TLS."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from agent.client import DEFAULT_TIMEOUT, KmsClient
from agent.enroll import enroll
from agent.exchange import initiate, respond_once
from agent.files import decrypt_file, encrypt_file
from agent.keys import KeyFetcher
from agent.state import AgentIdentity, StateDir, default_state_dir
from agent.watch import Watcher
from kms import filesig
from kms.addresses import join_hostport, parse_hostport
from kms.cli import ArgumentParser, print_json, run_main
from kms.errors import AlreadyExists, FailedPrecondition, InvalidArgument, KmsError, NotFound, Revoked
from kms.groups import Group
from kms.handshake import Session
from kms.peers import agent_peer
from kms.securefile import ensure_private_dir, write_atomic

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _state(args: argparse.Namespace) -> StateDir:
    return StateDir(Path(args.dir) if args.dir else default_state_dir())


def _default_enroll_server(server: str) -> str:
    # Convention shared with kms-server: enrollment listens on the API port + 1
    # unless told otherwise (docs/adr/0001-enrollment-listener.md).
    host, port = parse_hostport(server, what="--server")
    return join_hostport(host, port + 1)


def cmd_enroll(args: argparse.Namespace) -> int:
    state = _state(args)
    if state.enrolled and not args.force:
        raise AlreadyExists(f"this agent is already enrolled ({state.path}): pass --force to enroll again")
    server = args.server or os.environ.get("KMS_SERVER")
    token = args.token or os.environ.get("KMS_JOIN_TOKEN")
    fp = args.ca_fingerprint or os.environ.get("KMS_CA_FINGERPRINT")
    if not server or not token or not fp:
        raise InvalidArgument(
            "enroll needs --server, --token and --ca-fingerprint (or KMS_SERVER, KMS_JOIN_TOKEN, KMS_CA_FINGERPRINT)"
        )
    enroll_server = (
        args.enroll_server or os.environ.get("KMS_ENROLL_SERVER") or _default_enroll_server(server)
    )
    identity = enroll(
        server=server,
        enroll_server=enroll_server,
        token=token,
        ca_fingerprint=fp,
        key_size=args.key_size,
        timeout=args.timeout,
    )
    state.save(identity)
    not_after = identity.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    print(
        f"enrolled as {identity.settings.name} ({identity.settings.spiffe_id}), certificate {identity.cert.serial_number:x} valid until {not_after}"
    )
    return 0


def _connect(args: argparse.Namespace) -> tuple[AgentIdentity, KmsClient]:
    """Loads this agent's identity and opens an mTLS client to its server."""
    identity = _state(args).load()
    client = KmsClient(
        identity.settings.server,
        identity.ca_bundle_pem,
        key_pem=identity.key_pem,
        cert_pem=identity.cert_pem,
        timeout=args.timeout,
    )
    return identity, client


def cmd_status(args: argparse.Namespace) -> int:
    identity, client = _connect(args)
    with client:
        seen = client.whoami().agent
    not_after = _iso(seen.not_after)
    if args.json:
        print_json(
            {
                "name": seen.name,
                "groups": list(seen.groups),
                "spiffe_id": seen.spiffe_id,
                "serial": seen.serial,
                "not_after": not_after,
                "server": identity.settings.server,
                "status": seen.status,
            }
        )
    else:
        print(f"name:      {seen.name}")
        print(f"groups:    {','.join(seen.groups) or '-'}")
        print(f"spiffe id: {seen.spiffe_id}")
        print(f"serial:    {seen.serial}")
        print(f"expires:   {not_after}")
        print(f"server:    {identity.settings.server} (verified over mTLS)")
    return 0


def _encode(material: bytes, fmt: str) -> bytes:
    if fmt == "hex":
        return material.hex().encode() + b"\n"
    if fmt == "base64":
        return base64.b64encode(material) + b"\n"
    return material


def cmd_fetch_key(args: argparse.Namespace) -> int:
    identity, client = _connect(args)
    with client:
        key = KeyFetcher(identity, client).fetch(args.name, args.version)
    meta = {"name": key.name, "version": key.version, "state": key.state, "created_at": _iso(key.created_at)}
    if args.out:
        # A key file is raw bytes unless a text format is asked for.
        write_atomic(Path(args.out), _encode(key.material, args.format or "raw"), mode=0o600)
        # Remembered so that kms-agent watch can delete it if the version is compromised.
        _state(args).remember_key_file(key.name, key.version, Path(args.out))
        meta["file"] = args.out
    if args.json:
        if args.include_key:
            meta["key_base64"] = base64.b64encode(key.material).decode()
        print_json(meta)
    elif args.out:
        print(f"wrote {key.name} version {key.version} to {args.out}")
    else:
        fmt = args.format or "base64"
        if fmt == "raw" and sys.stdout.isatty():
            raise InvalidArgument(
                "refusing to print a raw key to a terminal: use --out FILE or --format base64"
            )
        sys.stdout.buffer.write(_encode(key.material, fmt))
        sys.stdout.flush()
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    identity, client = _connect(args)
    with client:
        key = KeyFetcher(identity, client).fetch(args.key)
    if key.state != "active":
        raise FailedPrecondition(
            f"key {key.name!r} version {key.version} is {key.state}: it may only decrypt"
        )
    encrypt_file(Path(args.input), Path(args.output), key.material, key.name, key.version)
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    identity, client = _connect(args)
    with client:
        fetcher = KeyFetcher(identity, client)
        decrypt_file(
            Path(args.input), Path(args.output), lambda name, version: fetcher.fetch(name, version).material
        )
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    state = _state(args)
    identity = state.load()

    def connect() -> KmsClient:
        return KmsClient(
            identity.settings.server,
            identity.ca_bundle_pem,
            key_pem=identity.key_pem,
            cert_pem=identity.cert_pem,
            timeout=args.timeout,
        )

    watcher = Watcher(
        state, identity, connect, as_json=args.json, exec_cmd=args.exec, silence_timeout=args.silence_timeout
    )
    return watcher.run()


def cmd_check(args: argparse.Namespace) -> int:
    if bool(args.serial) == bool(args.cert):
        raise InvalidArgument("check needs exactly one of --serial or --cert")
    serial = args.serial
    if args.cert:
        try:
            serial = format(x509.load_pem_x509_certificate(Path(args.cert).read_bytes()).serial_number, "x")
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"--cert {args.cert} is not a readable PEM certificate") from exc
    _, client = _connect(args)
    with client:
        status = client.check_certificate(serial)
    fields: dict[str, object] = {"serial": status.serial, "status": status.status}
    if status.agent_name:
        fields["agent"] = status.agent_name
    if status.status == "revoked":
        fields |= {"reason": status.reason, "revoked_at": _iso(status.revoked_at)}
    if args.json:
        print_json(fields)
    else:
        print(" ".join(f"{k}={v}" for k, v in fields.items()))
    # Scripts read the answer from the exit code: 0 good, 11 revoked, 5 unknown.
    return {"good": 0, "revoked": Revoked.exit_code}.get(status.status, NotFound.exit_code)


def _print_session(session: Session, args: argparse.Namespace, path: Path | None) -> None:
    fields: dict[str, object] = {"session_id": session.session_id, "peer": session.peer.name}
    if path is not None:
        fields["file"] = str(path)
    elif getattr(args, "out", None) is None and getattr(args, "out_dir", None) is None:
        fields["key_base64"] = base64.b64encode(session.key).decode()
    if args.json:
        print(json.dumps(fields, sort_keys=True), flush=True)
    else:
        print(" ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def cmd_exchange(args: argparse.Namespace) -> int:
    identity, client = _connect(args)
    with client:
        session = initiate(identity, client, args.peer, Group(args.group), args.handshake_timeout)
    path = None
    if args.out:
        path = Path(args.out)
        write_atomic(path, session.key, mode=0o600)
    _print_session(session, args, path)
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    state = _state(args)
    identity, client = _connect(args)
    out_dir = Path(args.out_dir) if args.out_dir else state.path / "sessions"
    ensure_private_dir(out_dir)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        client.close()  # ends the waiting Listen stream

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    with client:
        while not stop.is_set():
            try:
                session = respond_once(identity, client, args.handshake_timeout)
            except KmsError as exc:
                if stop.is_set():
                    break
                if args.once or isinstance(exc, Revoked):
                    raise
                logger.warning("exchange failed: %s", exc.message)
                continue
            path = out_dir / f"{session.session_id}.key"
            write_atomic(path, session.key, mode=0o600)
            _print_session(session, args, path)
            if args.once:
                break
    return 0


def _sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    return digest.digest()


def cmd_sign(args: argparse.Namespace) -> int:
    identity = _state(args).load()
    from cryptography.hazmat.primitives.serialization import Encoding

    digest = _sha256_file(Path(args.file))
    chain = (identity.cert.public_bytes(Encoding.DER),)
    sig = filesig.create(identity.key, chain, digest, int(datetime.now(UTC).timestamp()))
    out = Path(args.out) if args.out else Path(args.file + ".sig")
    write_atomic(out, sig.encode(), mode=0o644)
    print(f"signed {args.file} as {identity.settings.name}: {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        sig = filesig.parse(Path(args.signature).read_bytes())
    except OSError as exc:
        raise InvalidArgument(f"cannot read {args.signature}: {exc.strerror}") from None
    digest = _sha256_file(Path(args.file))
    identity, client = _connect(args)
    ca = x509.load_pem_x509_certificate(identity.ca_bundle_pem)
    trust_domain = identity.settings.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
    with client:

        def is_revoked(serial: str) -> bool:  # revocation status now, from the server
            return client.check_certificate(serial).status != "good"

        signer = filesig.verify_file(
            sig, digest, lambda when: agent_peer(ca, trust_domain, args.signer, when, is_revoked)
        )
    signed = datetime.fromtimestamp(sig.signed_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.json:
        print_json({"valid": True, "signer": signer.name, "serial": signer.serial, "signed_at": signed})
    else:
        print(f"good signature by {signer.name} (certificate {signer.serial}) made {signed}")
    return 0


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_parser() -> ArgumentParser:
    # The shared options work before or after the subcommand: the subcommand's
    # copies default to SUPPRESS so they never overwrite a value given earlier.
    def shared(p: ArgumentParser, top: bool) -> None:
        suppress = argparse.SUPPRESS
        p.add_argument(
            "--dir",
            default=None if top else suppress,
            help="state directory (env KMS_AGENT_DIR; default ~/.local/state/kms-agent)",
        )
        p.add_argument(
            "--timeout", type=float, default=DEFAULT_TIMEOUT if top else suppress, help="seconds per call"
        )
        p.add_argument(
            "--verbose",
            action="store_true",
            default=False if top else suppress,
            help="debug logging and tracebacks",
        )

    common = ArgumentParser(add_help=False)
    shared(common, top=False)

    parser = ArgumentParser(prog="kms-agent", description="Seed KMS agent.")
    shared(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    en = sub.add_parser(
        "enroll", parents=[common], help="make a key and trade a join token for a certificate"
    )
    en.add_argument("--server", help="the server's mTLS address HOST:PORT (env KMS_SERVER)")
    en.add_argument(
        "--enroll-server",
        help="the enrollment address HOST:PORT (env KMS_ENROLL_SERVER; default: --server port + 1)",
    )
    en.add_argument("--token", help="one-time join token (env KMS_JOIN_TOKEN, which keeps it out of ps)")
    en.add_argument("--ca-fingerprint", help="sha256:HEX as kms-server prints it (env KMS_CA_FINGERPRINT)")
    en.add_argument("--key-size", type=int, choices=(2048, 3072, 4096), default=2048, help="RSA key size")
    en.add_argument("--force", action="store_true", help="replace an existing enrollment")
    en.set_defaults(func=cmd_enroll)

    st = sub.add_parser("status", parents=[common], help="show this agent's identity, proven over mTLS")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    fk = sub.add_parser("fetch-key", parents=[common], help="fetch a granted key, unwrap it locally")
    fk.add_argument("name")
    fk.add_argument("--version", type=int, default=0, help="key version (default: current)")
    fk.add_argument("--out", help="write the key to FILE (0600, atomically) instead of stdout")
    fk.add_argument(
        "--format", choices=("raw", "base64", "hex"), help="raw for --out, base64 for stdout by default"
    )
    fk.add_argument(
        "--json", action="store_true", help="print metadata as JSON (no key unless --include-key)"
    )
    fk.add_argument("--include-key", action="store_true", help="with --json: include the key, base64")
    fk.set_defaults(func=cmd_fetch_key)

    en = sub.add_parser("encrypt", parents=[common], help="encrypt a file with the current version of a key")
    en.add_argument("--key", required=True, help="key name")
    en.add_argument("input", metavar="IN")
    en.add_argument("output", metavar="OUT")
    en.set_defaults(func=cmd_encrypt)

    de = sub.add_parser("decrypt", parents=[common], help="decrypt a file made by kms-agent encrypt")
    de.add_argument("input", metavar="IN")
    de.add_argument("output", metavar="OUT")
    de.set_defaults(func=cmd_decrypt)

    wa = sub.add_parser("watch", parents=[common], help="follow revocations; resume where it left off")
    wa.add_argument("--json", action="store_true", help="one JSON object per line")
    wa.add_argument("--exec", help="shell command run per event, with KMS_EVENT_* variables")
    wa.add_argument(
        "--silence-timeout",
        type=float,
        default=20.0,
        help="reconnect after this many seconds without a message",
    )
    wa.set_defaults(func=cmd_watch)

    ex = sub.add_parser(
        "exchange", parents=[common], help="agree on a session key with the server or an agent"
    )
    ex.add_argument("--peer", required=True, help="'server' or an agent name")
    ex.add_argument("--group", choices=[g.value for g in Group], default=Group.X25519.value)
    ex.add_argument("--out", help="write the 32-byte session key to FILE (0600) instead of printing it")
    ex.add_argument("--json", action="store_true")
    ex.add_argument("--handshake-timeout", type=float, default=15.0, help="seconds to wait for each step")
    ex.set_defaults(func=cmd_exchange)

    li = sub.add_parser("listen", parents=[common], help="accept key exchanges from other agents")
    li.add_argument("--once", action="store_true", help="exit after one exchange")
    li.add_argument("--out-dir", help="where session keys go, as <id>.key (default: <state dir>/sessions)")
    li.add_argument("--json", action="store_true")
    li.add_argument("--handshake-timeout", type=float, default=15.0, help="seconds to wait for each step")
    li.set_defaults(func=cmd_listen)

    sg = sub.add_parser("sign", parents=[common], help="sign a file with this agent's key (RSA-PSS)")
    sg.add_argument("file", metavar="FILE")
    sg.add_argument("--out", metavar="SIG", help="signature file (default FILE.sig)")
    sg.set_defaults(func=cmd_sign)

    vf = sub.add_parser(
        "verify", parents=[common], help="verify a signature: chain, signer, time, revocation"
    )
    vf.add_argument("file", metavar="FILE")
    vf.add_argument("signature", metavar="SIG")
    vf.add_argument("--signer", help="the agent name the signature must be from")
    vf.add_argument("--json", action="store_true")
    vf.set_defaults(func=cmd_verify)

    ck = sub.add_parser(
        "check", parents=[common], help="revocation status of a certificate (exit 0 good, 11 revoked)"
    )
    ck.add_argument("--serial", help="certificate serial, hex")
    ck.add_argument("--cert", help="a PEM certificate file")
    ck.add_argument("--json", action="store_true")
    ck.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("kms-agent", build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
