"""kms-agent's --help pages completed: one example per subcommand, and help for the arguments that had
none (kms.cli_help.document applies them; tests/unit/test_cli_help_pages.py checks every page)."""

from __future__ import annotations

__all__ = ["ARGUMENTS", "COMMON", "EXAMPLES"]

EXAMPLES = {
    "enroll": 'kms-agent enroll --server kms.example.org:8443 --token "$TOKEN" --ca-fingerprint sha256:HEX',
    "run": "kms-agent run --sessions-dir /run/kms-sessions",
    "renew": "kms-agent renew",
    "status": "kms-agent status --json",
    "keys": "kms-agent keys --json",
    "fetch-key": "kms-agent fetch-key app --out /etc/app/app.key",
    "public-key": "kms-agent public-key signing --version 2",
    "encrypt": "kms-agent encrypt --key app report.pdf report.pdf.kms",
    "decrypt": "kms-agent decrypt report.pdf.kms report.pdf",
    "watch": "kms-agent watch --json --exec 'systemctl reload app'",
    "exchange": "kms-agent exchange --peer web-2 --out session.key",
    "listen": "kms-agent listen --once --from web-1",
    "sign": "kms-agent sign release.tar.gz",
    "verify": "kms-agent verify release.tar.gz release.tar.gz.sig --signer build-1",
    "check": "kms-agent check --cert peer.crt",
}

ARGUMENTS = {
    "fetch-key": {"name": "the key's name"},
    "public-key": {"name": "the key pair's name"},
    "exchange": {"group": "the key agreement group (default x25519)"},
}

COMMON = {
    "json": "print JSON instead of text",
}
