"""kms-agent: enroll with kms-server, then prove the identity over mutual TLS; the commands live in
agent/commands/, this module only parses the command line."""

from __future__ import annotations

from collections.abc import Sequence

from agent.client import DEFAULT_TIMEOUT
from agent.commands.exchange import cmd_exchange, cmd_listen
from agent.commands.identity import cmd_enroll, cmd_renew, cmd_status
from agent.commands.keys import cmd_decrypt, cmd_encrypt, cmd_fetch_key
from agent.commands.revocation import cmd_check, cmd_watch
from agent.commands.run import cmd_run
from agent.commands.signing import cmd_sign, cmd_verify
from agent.config import apply_config
from agent.renew import DEFAULT_RENEW_FRACTION
from kms.cli import ArgumentParser, command_parsers, run_main
from kms.groups import Group

__all__ = ["main"]

# Output files (see kms/securefile.py): a regular file is replaced atomically; "-" is stdout; a FIFO or
# a character device (or a link to one, like /dev/stdout) is written through; a link to a regular file
# is refused unless this flag is given.
_FOLLOW = (
    "an output that is a symbolic link to a regular file is refused unless this is given; then the file"
    " it points to is replaced (atomically) and the link kept"
)


def _output_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--follow-symlinks", action="store_true", help=_FOLLOW)


def build_parser() -> ArgumentParser:
    parser, common = command_parsers(
        "kms-agent",
        "Seed KMS agent.",
        [
            (
                ("--dir",),
                {
                    "default": None,
                    "help": "state directory (env KMS_AGENT_DIR; default ~/.local/state/kms-agent)",
                },
            ),
            (("--timeout",), {"type": float, "default": DEFAULT_TIMEOUT, "help": "seconds per call"}),
            (("--config",), {"default": None, "help": "TOML config file (env KMS_AGENT_CONFIG)"}),
            (
                ("--log-format",),
                {"default": "text", "choices": ("text", "json"), "help": "log lines as text or json"},
            ),
            (
                ("--renew-fraction",),
                {
                    "type": float,
                    "default": DEFAULT_RENEW_FRACTION,
                    "help": "renew the certificate past this fraction of its life (default 2/3)",
                },
            ),
        ],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    en = sub.add_parser(
        "enroll", parents=[common], help="make a key and trade a join token for a certificate"
    )
    en.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the server's mTLS address; repeat it or separate with commas for replicas, tried in order"
        " (env KMS_SERVER, comma-separated)",
    )
    en.add_argument(
        "--enroll-server",
        action="append",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="enrollment address(es), tried in order (env KMS_ENROLL_SERVER; default: each --server's port + 1)",
    )
    en.add_argument("--token", help="one-time join token (env KMS_JOIN_TOKEN, which keeps it out of ps)")
    en.add_argument("--ca-fingerprint", help="sha256:HEX as kms-server prints it (env KMS_CA_FINGERPRINT)")
    en.add_argument("--key-size", type=int, choices=(2048, 3072, 4096), default=2048, help="RSA key size")
    en.add_argument("--force", action="store_true", help="replace an existing enrollment")
    en.set_defaults(func=cmd_enroll)

    ru = sub.add_parser(
        "run", parents=[common], help="run the agent: renew, watch revocations, answer exchanges"
    )
    ru.add_argument("--no-listen", action="store_true", help="do not answer key exchanges")
    ru.add_argument("--sessions-dir", help="where answered exchanges' keys go (default <state dir>/sessions)")
    ru.add_argument("--handshake-timeout", type=float, default=15.0, help="seconds to wait for each step")
    ru.set_defaults(func=cmd_run)

    rn = sub.add_parser("renew", parents=[common], help="renew this agent's certificate now, with a new key")
    rn.set_defaults(func=cmd_renew)

    st = sub.add_parser("status", parents=[common], help="show this agent's identity, proven over mTLS")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    fk = sub.add_parser("fetch-key", parents=[common], help="fetch a granted key, unwrap it locally")
    fk.add_argument("name")
    fk.add_argument("--version", type=int, default=0, help="key version (default: current)")
    fk.add_argument(
        "--out",
        help="write the key to FILE (0600, atomically; - for stdout, raw unless --format) instead of"
        " printing it in base64",
    )
    fk.add_argument(
        "--format", choices=("raw", "base64", "hex"), help="raw for --out, base64 for stdout by default"
    )
    fk.add_argument(
        "--json", action="store_true", help="print metadata as JSON (no key unless --include-key)"
    )
    fk.add_argument("--include-key", action="store_true", help="with --json: include the key, base64")
    _output_flags(fk)
    fk.set_defaults(func=cmd_fetch_key)

    en = sub.add_parser("encrypt", parents=[common], help="encrypt a file with the current version of a key")
    en.add_argument("--key", required=True, help="key name")
    en.add_argument("input", metavar="IN", help="file to encrypt; - for stdin")
    en.add_argument("output", metavar="OUT", help="where the ciphertext goes; - for stdout")
    _output_flags(en)
    en.set_defaults(func=cmd_encrypt)

    de = sub.add_parser("decrypt", parents=[common], help="decrypt a file made by kms-agent encrypt")
    de.add_argument("input", metavar="IN", help="file to decrypt; - for stdin")
    de.add_argument("output", metavar="OUT", help="where the plaintext goes; - for stdout")
    _output_flags(de)
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
    ex.add_argument(
        "--out",
        help="write the 32-byte session key to FILE (0600; - for stdout, raw) instead of printing it in base64",
    )
    _output_flags(ex)
    ex.add_argument("--json", action="store_true")
    ex.add_argument("--handshake-timeout", type=float, default=15.0, help="seconds to wait for each step")
    ex.set_defaults(func=cmd_exchange)

    li = sub.add_parser("listen", parents=[common], help="accept key exchanges from other agents")
    li.add_argument(
        "--once", action="store_true", help="exit after one completed exchange (failed attempts do not count)"
    )
    li.add_argument("--out-dir", help="where session keys go, as <id>.key (default: <state dir>/sessions)")
    li.add_argument("--json", action="store_true")
    li.add_argument(
        "--from", dest="accept_from", metavar="AGENT", help="accept exchanges only from this agent"
    )
    li.add_argument("--handshake-timeout", type=float, default=15.0, help="seconds to wait for each step")
    li.set_defaults(func=cmd_listen)

    sg = sub.add_parser("sign", parents=[common], help="sign a file with this agent's key (RSA-PSS)")
    sg.add_argument("file", metavar="FILE", help="file to sign; - for stdin (then --out is needed)")
    sg.add_argument("--out", metavar="SIG", help="signature file (default FILE.sig); - for stdout")
    _output_flags(sg)
    sg.set_defaults(func=cmd_sign)

    vf = sub.add_parser(
        "verify", parents=[common], help="verify a signature: chain, signer, time, revocation"
    )
    vf.add_argument("file", metavar="FILE", help="the signed file; - for stdin")
    vf.add_argument("signature", metavar="SIG", help="its signature; - for stdin")
    vf.add_argument("--signer", help="the agent name the signature must be from")
    vf.add_argument("--json", action="store_true")
    vf.set_defaults(func=cmd_verify)

    ck = sub.add_parser(
        "check", parents=[common], help="revocation status of a certificate (exit 0 good, 11 revoked)"
    )
    ck.add_argument("--serial", help="certificate serial, hex")
    ck.add_argument("--cert", help="a PEM certificate file; - for stdin")
    ck.add_argument("--json", action="store_true")
    ck.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_main("kms-agent", parser, argv, prepare=lambda args: apply_config(parser, args))


if __name__ == "__main__":
    raise SystemExit(main())
