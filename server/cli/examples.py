"""kms-server's --help pages completed: one example per subcommand, and help for the arguments that had
none (kms.cli_help.document applies them; tests/unit/test_cli_help_pages.py checks every page)."""

from __future__ import annotations

__all__ = ["ARGUMENTS", "COMMON", "EXAMPLES"]

EXAMPLES = {
    "run": "kms-server run --data-dir /var/lib/seed-kms --listen 0.0.0.0:8443",
    "init": "kms-server init --data-dir /var/lib/seed-kms --trust-domain example.org",
    "config show": "kms-server config show --config /etc/seed-kms.toml",
    "token create": "kms-server token create --name web-1 --group web --ttl 15m",
    "ca fingerprint": "kms-server ca fingerprint",
    "ca cert": "kms-server ca cert > ca.crt",
    "ca rotate": "kms-server ca rotate --key-type ecdsa-p384",
    "ca status": "kms-server ca status --json",
    "ca activate": "kms-server ca activate",
    "ca cancel": "kms-server ca cancel",
    "agents list": "kms-server agents list --json",
    "key create": "kms-server key create app --grant group:web",
    "key rotate": "kms-server key rotate app",
    "key grant": "kms-server key grant app agent:web-2",
    "key ungrant": "kms-server key ungrant app group:web",
    "key list": "kms-server key list --json",
    "key destroy": "kms-server key destroy app --version 1",
    "key disable": "kms-server key disable app --reason 'suspected leak'",
    "key enable": "kms-server key enable app",
    "key set": "kms-server key set app --rotate-every 30d --expires-in 365d",
    "key show": "kms-server key show app",
    "revoke cert": "kms-server revoke cert 1f68002b8bfa3e87 --reason keyCompromise",
    "revoke agent": "kms-server revoke agent web-1 --reason keyCompromise",
    "revoke key": "kms-server revoke key app --version 1 --reason keyCompromise",
    "release cert": "kms-server release cert 1f68002b8bfa3e87",
    "release agent": "kms-server release agent web-1",
    "top": "kms-server top --filter web",
    "revocations list": "kms-server revocations list --json",
    "backup": "kms-server backup /backups/kms.tar",
    "restore": "kms-server restore kms.tar --master-key master.key --data-dir /var/lib/seed-kms-new",
    "audit list": "kms-server audit list --since 100 --json",
    "audit verify": "kms-server audit verify --against /var/log/kms-audit.log",
}

_KEY = {"name": "the key's name"}
_VERSION = {"version": "the key version"}

ARGUMENTS = {
    **{
        f"key {verb}": _KEY
        for verb in ("create", "rotate", "grant", "ungrant", "disable", "enable", "set", "show")
    },
    "key destroy": {**_KEY, **_VERSION},
    "revoke cert": {"serial": "the certificate's serial number, hex (as agents list shows it)"},
    "revoke agent": {"name": "the agent's name"},
    "revoke key": {**_KEY, **_VERSION},
    "release cert": {"serial": "the held certificate's serial number, hex"},
    "release agent": {"name": "the held agent's name"},
    "backup": {"file": "where to write the backup (a tar file, 0600)"},
    "restore": {"file": "the backup file kms-server backup wrote"},
}

COMMON = {
    "json": "print JSON instead of text",
}
