"""server/enrollment/agents.py: a listing says of each agent's newest certificate what authentication would."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from server.enrollment.agents import AgentDirectory
from server.store import CertificateRecord, JoinTokenRecord, SqliteStore

NOW = 1_800_000_000


def test_status_is_valid_revoked_expired_or_not_yet_valid(tmp_path: Path) -> None:
    revoked_in_memory: set[str] = set()

    async def body() -> dict[str, str]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            for i, (name, start, end) in enumerate(
                [("ok", NOW - 10, NOW + 10), ("old", NOW - 20, NOW), ("early", NOW + 5, NOW + 50),
                 ("cut", NOW - 10, NOW + 10), ("mem", NOW - 10, NOW + 10)]
            ):  # fmt: skip
                token_id = f"{i:016x}"
                await store.add_join_token(
                    JoinTokenRecord(token_id, b"h" * 32, name, (), NOW - 30, NOW + 900)
                )
                cert = CertificateRecord(f"{i + 1:x}", name, start, end, b"der", NOW - 30, None)
                assert await store.enroll(token_id, b"h" * 32, NOW - 30, cert)
            await store.revoke_certificate("4", "keyCompromise", NOW - 1)  # "cut": in the store
            revoked_in_memory.add("5")  # "mem": in the map that authenticates (e.g. another replica's)
            directory = AgentDirectory(
                store,
                "t.example",
                lambda: datetime.fromtimestamp(NOW, UTC),
                lambda serial: "superseded" if serial in revoked_in_memory else None,
            )
            return {v.record.name: v.status for v in await directory.list()}
        finally:
            await store.close()

    assert asyncio.run(body()) == {
        "ok": "valid",
        "old": "expired",
        "early": "not yet valid",
        "cut": "revoked",
        "mem": "revoked",
    }
