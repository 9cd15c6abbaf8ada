"""kms-agent watch: follow the revocation feed, act on each event, resume where it left off.

Per event, in order: delete local key files of a compromised key version
(a disabled key's files are kept: disabling stops releases, it says nothing
leaked), run --exec, print the event, then persist its sequence number. A heartbeat
carries the server's position for this agent (every event up to it was sent,
or is about a key this agent is not granted): it is persisted too, so a
restart does not replay events withheld from this agent. The stream is
reopened with exponential backoff (with jitter) when the server goes away,
this agent's certificate is on hold (until it is released), or the server
stays silent for longer than three heartbeats, on the next of the agent's
server addresses (rotating through them); it resumes from the persisted
number, so the server neither skips nor repeats anything.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

import grpc

from agent.bundle import catch_up, drop_issuer, news, refresh_bundle, retired_issuer
from agent.client import Endpoint, KmsClient
from agent.servers import Servers
from agent.state import AgentIdentity, KeyFile, StateDir
from agent.watchdog import Watchdog
from kms.errors import Held, KmsError, ResourceExhausted, Revoked, Unauthenticated, Unavailable
from kms.events import describe, event_fields
from kms.revocation import CA_COMPROMISE, HOLD
from kms.v1 import revocation_pb2

__all__ = ["Watcher"]

logger = logging.getLogger(__name__)

BACKOFF_START = 0.2
BACKOFF_MAX = 10.0
# While on hold: how long at most between two attempts (a release is noticed within this).
HOLD_RETRY_MAX = 5.0
# How long reading the trust bundle from an enrollment address may take, after a server this
# agent could not verify (agent/bundle.py catch_up).
CATCH_UP_TIMEOUT = 10.0
# How often at most a failed connection reads the trust bundle from an enrollment address: any
# Unavailable may mean this agent missed an activation (a refused client certificate after an
# emergency rotation says nothing of trust), and catch_up returns at once when it did not.
CATCH_UP_EVERY = 60.0


class Watcher:
    def __init__(
        self,
        state: StateDir,
        identity: AgentIdentity,
        connect: Callable[[], KmsClient],
        *,
        as_json: bool,
        exec_cmd: str | None,
        silence_timeout: float,
        on_stale_key_files: Callable[[revocation_pb2.RevocationEvent, list[KeyFile]], None] | None = None,
    ) -> None:
        # Called with the key files an event made stale (compromised and deleted, or
        # rotated away from); kms-agent run re-fetches them, kms-agent watch does not.
        self._on_stale_key_files = on_stale_key_files
        self._state = state
        self._identity = identity
        self._connect = connect
        self._json = as_json
        self._exec = exec_cmd
        self._silence = silence_timeout
        self._serial = format(identity.cert.serial_number, "x")
        self._stopping = threading.Event()
        self._call: grpc.Future | None = None
        self._position = 0  # the last sequence number persisted
        self._caught_up_at = -CATCH_UP_EVERY  # time.monotonic() of the last catch_up

    def stop(self, *_: object) -> None:
        self._stopping.set()
        if self._call is not None:
            self._call.cancel()

    def run(self, *, install_signals: bool = True) -> int:
        """Watches until stopped (exit 0) or this agent is revoked (Revoked raised).

        A hold (certificateHold) is not the end: the stream is reopened, with backoff up to
        HOLD_RETRY_MAX, until the hold is released, and resumes where it left off.
        """
        if install_signals:  # only the main thread may; kms-agent run handles signals itself
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        self._check_issuer()  # a bundle taken before a restart may have retired this agent's CA
        backoff = BACKOFF_START
        while not self._stopping.is_set():
            try:
                if self._stream_once():
                    backoff = BACKOFF_START
            except Held as exc:  # suspended, not revoked: wait for the release, however long
                logger.warning("on hold, retrying until released: %s", exc.message)
                backoff = min(backoff, HOLD_RETRY_MAX / 2)
            except Unauthenticated:  # Revoked among them: final, not a reason to reconnect
                raise
            except (Unavailable, ResourceExhausted) as exc:
                logger.warning("watch interrupted, reconnecting: %s", exc.message)
                if isinstance(exc, Unavailable) and self._catch_up():
                    backoff = BACKOFF_START  # a CA activated while this agent was away: trusted now
            if self._stopping.is_set():
                break
            self._stopping.wait(backoff * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            backoff = min(backoff * 2, BACKOFF_MAX)
        return 0

    def _catch_up(self) -> bool:
        """catch_up (agent/bundle.py), at most once per CATCH_UP_EVERY; whether the trust changed.

        Raises:
            Revoked: the new trust leaves out the CA of this agent's certificate.
        """
        if time.monotonic() - self._caught_up_at < CATCH_UP_EVERY:
            return False
        self._caught_up_at = time.monotonic()
        changed = catch_up(self._state, self._identity.settings.enroll_servers, _now(), CATCH_UP_TIMEOUT)
        if changed:
            self._check_issuer()
        return changed

    def _check_issuer(self) -> None:
        """Raises Revoked (exit 11) when this agent no longer trusts the CA of its own certificate:
        the server retired it (no connection with that certificate is accepted any more) or it was
        compromised. Only a new enrollment brings the agent back."""
        ca = retired_issuer(self._state, _now())
        if ca is not None:
            name = self._identity.settings.name
            raise Revoked(
                f"this agent's certificate was issued by CA {ca} which this agent no longer trusts"
                f" (retired, or compromised): ask for a new join token (kms-server token create --name {name}) and run"
                " kms-agent enroll --force"
            )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _stream_once(self) -> bool:
        """One stream; returns whether any message arrived (to reset the backoff).

        However the stream ends, the next one goes to the next server address
        (replicas share one event log, so the persisted sequence number is valid
        on each); with one address, that is the same one again.
        """
        with self._connect() as client:
            endpoint = client.endpoint(client.servers.current)
            try:
                got_any = self._follow(endpoint)
            except (Unavailable, ResourceExhausted):
                self._move_on(client.servers, endpoint.target)
                raise
            self._move_on(client.servers, endpoint.target)
            return got_any

    def _move_on(self, servers: Servers, address: str) -> None:
        following = servers.move_past(address)
        if not self._stopping.is_set() and following != address:
            logger.info("watch stream on %s ended; next: %s", address, following)

    def _follow(self, endpoint: Endpoint) -> bool:
        got_any = got_heartbeat = False
        self._position = self._state.last_seq()
        call = endpoint.watch(self._position)
        self._call = call
        watchdog = Watchdog(self._silence, call.cancel)
        try:
            for message in call:
                watchdog.reset()
                got_any = True
                which = message.WhichOneof("item")
                if which == "event":
                    self._handle(message.event)
                elif which == "heartbeat":
                    if not got_heartbeat:  # the server sends one as soon as the stream is live
                        got_heartbeat = True
                        logger.info("following the feed on %s from seq %d", endpoint.target, self._position)
                        self._catch_up_bundle()
                    self._advance(message.heartbeat.current_seq)
                elif which == "resume":
                    logger.warning("server asked to resume after %d", message.resume.after_seq)
        except grpc.RpcError as exc:
            if self._stopping.is_set():
                return got_any
            if exc.code() == grpc.StatusCode.CANCELLED and watchdog.fired:
                raise Unavailable(f"no message or heartbeat from {endpoint.target} in time") from None
            mapped = endpoint.map_error(exc)
            if exc.code() == grpc.StatusCode.CANCELLED:
                raise Unavailable(mapped.message) from None
            raise mapped from None
        finally:
            watchdog.cancel()
            self._call = None
        return got_any

    def _advance(self, seq: int) -> None:
        """Persists the stream's position; only forward, and only when it moved (one write per heartbeat at most)."""
        if seq > self._position:
            self._state.save_last_seq(seq)
            self._position = seq

    def _refresh_bundle(self) -> None:
        """The new trust bundle, verified and stored (agent/bundle.py). A refusal, or a server that
        cannot be reached, keeps the old trust (one line) and the stream goes on: the events after
        this one still count (an emergency rotation retires this agent's CA and revokes its
        certificate in one go, and a new connection with that certificate is refused), and the
        next stream's start checks the bundle again (_catch_up_bundle)."""
        try:
            with self._connect() as client:
                pem, version = client.get_trust_bundle()
        except KmsError as exc:
            logger.warning("kept the CA trust as it was: the server's trust bundle: %s", exc.message)
            return
        if refresh_bundle(self._state, pem, _now(), version) is not None:
            self._check_issuer()

    def _catch_up_bundle(self) -> None:
        """At a stream's start: a bundle this agent missed (enrolled, upgraded or offline since its
        event) is fetched now. Failing here changes nothing; the stream goes on."""
        try:
            with self._connect() as client:
                pem, version = client.get_trust_bundle()
            taken = (
                news(self._state, pem, version)
                and refresh_bundle(self._state, pem, _now(), version) is not None
            )
        except KmsError as exc:
            logger.warning("could not check the server's CA trust bundle: %s", exc.message)
            return
        if taken:
            self._check_issuer()

    def _handle(self, event: revocation_pb2.RevocationEvent) -> None:
        fields = event_fields(event)
        stale: list[KeyFile] = []
        if event.kind == "key":
            deleted = self._state.forget_key_files(event.key_name, event.key_version)
            for file in deleted:
                logger.info(
                    "deleted key file %s of compromised %s v%d", file.path, event.key_name, event.key_version
                )
            # A file pinned to the compromised version stays deleted; one that follows
            # the current version is re-fetched, as is any such file still behind
            # (a compromised current version rotates the key).
            behind = self._state.key_files_behind(event.key_name, event.key_version + 1)
            stale = [f for f in deleted if f.follows_current] + behind
        elif event.kind in ("rotate", "enable"):
            # After an enable, files behind the current version (a rotation while the key
            # was disabled could not be fetched) catch up.
            stale = self._state.key_files_behind(event.key_name, event.key_version)
        elif event.kind == "disable":
            # Not a compromise: the material did not leak, the administrator stopped its
            # release. Key files stay, and data encrypted under them stays readable.
            logger.info("key %s disabled (%s): its key files are kept", event.key_name, event.reason)
        elif event.kind == "bundle":
            self._refresh_bundle()
        elif event.kind == "expire":
            # Expired keys still decrypt (KMIP Deactivated): key files stay, only new
            # encryption under the key is refused by the server.
            logger.info("key %s expired: its key files are kept (they still decrypt)", event.key_name)
        if stale and self._on_stale_key_files is not None:
            self._on_stale_key_files(event, stale)
        if self._exec:
            env = {**os.environ, **{f"KMS_EVENT_{k.upper()}": str(v) for k, v in fields.items()}}
            result = subprocess.run(self._exec, shell=True, env=env, check=False)  # noqa: S602 - operator's command
            if result.returncode != 0:
                logger.warning("--exec exited %d for event %d", result.returncode, event.seq)
        print(json.dumps(fields, sort_keys=True) if self._json else describe(event), flush=True)
        self._advance(event.seq)
        # The current certificate (renewal may have replaced the one we started with).
        serial = format(self._state.load_certificate().serial_number, "x")
        mine = (event.kind == "agent" and event.agent_name == self._identity.settings.name) or (
            event.kind == "cert" and event.serial == serial
        )
        if mine and event.reason == HOLD:  # the server closes the stream; reconnect until released
            raise Held(f"this agent's certificate {serial} is on hold (certificateHold)")
        if mine and event.reason == CA_COMPROMISE:  # its CA signed it: nothing it vouches for holds
            drop_issuer(self._state, _now())
        if mine:
            self._state.save_revoked(serial, event.reason)  # kms-agent sign refuses, even offline
            raise Revoked(_revoked_line(event, self._identity.settings.name, serial))


def _now() -> datetime:
    return datetime.now(UTC)


def _revoked_line(event: revocation_pb2.RevocationEvent, name: str, serial: str) -> str:
    """What ends a watch (exit 11), in one line: what was revoked, which certificate, what to do."""
    if event.kind == "agent":  # the server bars this name from enrolling again, unless told otherwise
        return (
            f"this agent ({name}) was revoked ({event.reason}), and with it its certificate {serial}:"
            f" to enroll again, ask for a join token made with kms-server token create --name {name}"
            " --allow-reenroll, then run kms-agent enroll --force"
        )
    return (
        f"this agent's certificate {serial} was revoked ({event.reason}): ask for a new join token"
        f" (kms-server token create --name {name}), then run kms-agent enroll --force"
    )
