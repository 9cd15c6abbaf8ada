"""The key distributor: named keys with versions and grants (service), what agents ask of them:
wrapped release (release), and what administrators type about them (parsing)."""

from server.keys.parsing import MAX_REASON, MAX_VERSION, check_version, parse_disable_reason, parse_grant
from server.keys.service import FetchedKey, KeyChange, KeyRecord, KeyService, KeyStateChange

__all__ = [
    "MAX_REASON",
    "MAX_VERSION",
    "FetchedKey",
    "KeyChange",
    "KeyRecord",
    "KeyService",
    "KeyStateChange",
    "check_version",
    "parse_disable_reason",
    "parse_grant",
]
