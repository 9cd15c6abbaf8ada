"""Revocation tables of the SQLite store: state changes and the event log, in one transaction each."""

from __future__ import annotations

import sqlite3

from server.store import rules
from server.store.base import Audit, CertificateRecord, RevocationEvent, SealFn
from server.store.rows import (
    CERT_COLUMNS,
    DESCENDANTS,
    EVENT_COLUMNS,
    cert_record,
    event_record,
    grantees_json,
)
from server.store.sqlite_base import SqliteBase

__all__ = ["SqliteEvents", "append_event", "add_current_version", "revoked_certificates"]


def append_event(
    db: sqlite3.Connection,
    kind: str,
    reason: str,
    now: int,
    *,
    serial: str | None = None,
    agent: str | None = None,
    key: tuple[str, int] | None = None,
) -> RevocationEvent:
    """Appends one event to the log in the caller's transaction; its seq is the next one.

    A key event records the key's grantees as of this transaction (see RevocationEvent.grantees).
    """
    key_name, key_version = key if key else (None, None)
    grantees = (
        tuple(
            sorted(
                f"{r[0]}:{r[1]}"
                for r in db.execute("SELECT kind, grantee FROM key_grants WHERE key_name=?", (key_name,))
            )
        )
        if key_name is not None
        else None
    )
    cur = db.execute(
        "INSERT INTO events(kind, serial, agent_name, key_name, key_version, reason, at, grantees)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (kind, serial, agent, key_name, key_version, reason, now, grantees_json(grantees)),
    )
    assert cur.lastrowid is not None
    return RevocationEvent(cur.lastrowid, kind, serial, agent, key_name, key_version, reason, now, grantees)


def add_current_version(db: sqlite3.Connection, name: str, new: int, seal: SealFn, now: int) -> None:
    """Makes version new of key name, active and current (a rotation, or replacing a compromised one)."""
    db.execute("INSERT INTO key_versions VALUES (?, ?, 'active', ?, ?, ?)", (name, new, seal(new), now, now))
    db.execute("UPDATE keys SET current_version=? WHERE name=?", (new, name))


def revoked_certificates(db: sqlite3.Connection) -> list[CertificateRecord]:
    rows = db.execute(
        f"SELECT {CERT_COLUMNS} FROM certificates WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial"  # noqa: S608
    )
    return [cert_record(r) for r in rows]


class SqliteEvents(SqliteBase):
    """Revocation methods of SqliteStore."""

    async def revoke_certificate(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        def q(db: sqlite3.Connection) -> RevocationEvent | None:
            row = db.execute(
                "SELECT agent_name, revoked_at FROM certificates WHERE serial=?", (serial,)
            ).fetchone()
            if row is None:
                raise rules.no_certificate(serial)
            if row[1] is not None:
                return None
            db.execute(
                "UPDATE certificates SET revoked_at=?, revocation_reason=? WHERE serial=?",
                (now, reason, serial),
            )
            return append_event(db, "cert", reason, now, serial=serial, agent=row[0])

        return await self._write(q, audit)

    async def revoke_lineage(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> list[RevocationEvent] | None:
        def q(db: sqlite3.Connection) -> list[RevocationEvent] | None:
            row = db.execute(
                "SELECT agent_name, revoked_at FROM certificates WHERE serial=?", (serial,)
            ).fetchone()
            if row is None:
                raise rules.no_certificate(serial)
            lineage = [(serial, row[0], row[1])]
            lineage += db.execute(
                DESCENDANTS.format(parent="?") + " ORDER BY c.issued_at, c.serial", (serial,)
            )
            events = []
            for cert, agent, revoked_at in lineage:
                if revoked_at is None:
                    db.execute(
                        "UPDATE certificates SET revoked_at=?, revocation_reason=? WHERE serial=?",
                        (now, reason, cert),
                    )
                    events.append(append_event(db, "cert", reason, now, serial=cert, agent=agent))
            return events or None

        return await self._write(q, audit)

    async def revoke_agent(
        self, name: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        def q(db: sqlite3.Connection) -> RevocationEvent | None:
            row = db.execute("SELECT revoked_at FROM agents WHERE name=?", (name,)).fetchone()
            if row is None:
                raise rules.no_agent(name)
            serials = [
                r[0]
                for r in db.execute(
                    "SELECT serial FROM certificates WHERE agent_name=? AND revoked_at IS NULL ORDER BY serial",
                    (name,),
                )
            ]
            if row[0] is not None and not serials:
                return None
            db.execute(
                "UPDATE certificates SET revoked_at=?, revocation_reason=? WHERE agent_name=? AND revoked_at IS NULL",
                (now, reason, name),
            )
            db.execute("UPDATE agents SET revoked_at=COALESCE(revoked_at, ?) WHERE name=?", (now, name))
            return append_event(db, "agent", reason, now, serial=",".join(serials), agent=name)

        return await self._write(q, audit)

    async def revoke_key_version(
        self, name: str, version: int, reason: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> RevocationEvent | None:
        def q(db: sqlite3.Connection) -> tuple[RevocationEvent, int | None] | None:
            row = db.execute(
                "SELECT v.state, k.current_version FROM key_versions v JOIN keys k ON k.name = v.key_name"
                " WHERE v.key_name=? AND v.version=?",
                (name, version),
            ).fetchone()
            if row is None:
                raise rules.no_version(name, version)
            state, current = row
            new_state = rules.compromised_state(state)
            if new_state is None:
                return None
            db.execute(
                "UPDATE key_versions SET state=?, state_changed_at=? WHERE key_name=? AND version=?",
                (new_state, now, name, version),
            )
            replaced_by = None
            if version == current:
                # Nothing may keep encrypting under a compromised version.
                replaced_by = current + 1
                add_current_version(db, name, replaced_by, seal, now)
            return append_event(db, "key", reason, now, key=(name, version)), replaced_by

        done = await self._write(q, audit, invalidates=True)
        return None if done is None else done[0]

    async def last_event(
        self,
        *,
        kind: str,
        serial: str | None = None,
        agent: str | None = None,
        key: tuple[str, int] | None = None,
    ) -> RevocationEvent | None:
        def q() -> RevocationEvent | None:
            clauses: list[str] = ["kind=?"]
            args: list[object] = [kind]
            if kind == "cert":
                clauses.append("serial=?")
                args.append(serial)
            elif kind == "agent":
                clauses.append("agent_name=?")
                args.append(agent)
            else:
                assert key is not None
                clauses += ["key_name=?", "key_version=?"]
                args += [key[0], key[1]]
            row = self._db.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT 1",  # noqa: S608
                args,
            ).fetchone()
            if row is None and kind == "cert":
                # Revoked together with its agent: that event covers it.
                row = self._db.execute(
                    f"SELECT {EVENT_COLUMNS} FROM events WHERE kind='agent' AND ','||serial||',' LIKE ?"  # noqa: S608
                    " ORDER BY seq DESC LIMIT 1",
                    (f"%,{serial},%",),
                ).fetchone()
            return None if row is None else event_record(row)

        return await self._run(q)

    async def events_after(self, seq: int, limit: int) -> list[RevocationEvent]:
        def q() -> list[RevocationEvent]:
            rows = self._db.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq>? ORDER BY seq LIMIT ?",  # noqa: S608
                (seq, limit),
            )
            return [event_record(r) for r in rows]

        return await self._run(q)

    async def last_seq(self) -> int:
        def q() -> int:
            return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

        return await self._run(q)

    async def get_certificate(self, serial: str) -> CertificateRecord | None:
        def q() -> CertificateRecord | None:
            row = self._db.execute(
                f"SELECT {CERT_COLUMNS} FROM certificates WHERE serial=?",  # noqa: S608
                (serial,),
            ).fetchone()
            return None if row is None else cert_record(row)

        return await self._run(q)

    async def revoked_certificates(self) -> list[CertificateRecord]:
        return await self._run(lambda: revoked_certificates(self._db))
