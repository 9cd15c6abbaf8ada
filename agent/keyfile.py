"""A key file fetch-key --out wrote, as key-files.json records it (agent/state.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["KeyFile"]


@dataclass(frozen=True)
class KeyFile:
    """A key file fetch-key --out wrote."""

    name: str
    version: int
    path: Path
    format: str = "raw"  # raw, hex or base64; pem: a key pair's private key
    # Fetched without --version: kms-agent run moves it to each new current version.
    follows_current: bool = True

    @classmethod
    def parse(cls, entry: dict[str, object]) -> KeyFile:
        return cls(
            str(entry["name"]),
            int(str(entry["version"])),
            Path(str(entry["path"])),
            str(entry.get("format", "raw")),
            # Entries from before this field never move: a pinned file must not follow.
            bool(entry.get("follows_current", False)),
        )

    def entry(self) -> dict[str, object]:
        return {**asdict(self), "path": str(self.path)}
