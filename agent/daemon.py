"""kms-agent run: the long-running agent.

It keeps the certificate fresh (renewing at the renewal fraction of its life,
with jitter, retrying with backoff), holds the revocation watch (resuming
from its last sequence number), answers key exchanges, and re-fetches the
key files it keeps when the key rotates, is enabled again, or their version is compromised
(a disabled key's files are kept: disabling is a release decision, not a compromise; so are an
expired key's, whose versions still decrypt). SIGTERM or SIGINT stop
it cleanly (exit 0); its own revocation ends it with exit 11. A hold (certificateHold)
does not end it: each job retries, with backoff, until the hold is released.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from agent.client import KmsClient
from agent.context import refuse_expired
from agent.exchange import NoExchangeCame, respond_once
from agent.keys import KeyFetcher, encode_key
from agent.renew import renew, renewal_due
from agent.servers import Servers
from agent.state import KeyFile, StateDir
from agent.watch import Watcher
from kms.errors import DeadlineExceeded, Held, KeyDisabled, KeyExpired, KmsError, Revoked
from kms.securefile import ensure_private_dir, write_atomic
from kms.v1 import revocation_pb2

__all__ = ["AgentDaemon"]

logger = logging.getLogger(__name__)

RETRY_MAX = 60.0
# While this agent's certificate is on hold: how often renewal and the Listen stream try again.
HOLD_RETRY = 3.0


class AgentDaemon:
    def __init__(
        self,
        state: StateDir,
        *,
        timeout: float,
        renew_fraction: float,
        handshake_timeout: float,
        listen: bool,
        sessions_dir: Path,
    ) -> None:
        self._state = state
        self._timeout = timeout
        self._fraction = renew_fraction
        self._handshake_timeout = handshake_timeout
        self._listen = listen
        self._sessions = sessions_dir
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._clients: list[KmsClient] = []
        self._lock = threading.Lock()

    def _client(self) -> KmsClient:
        identity = self._state.load()  # always the current (possibly renewed) certificate
        client = KmsClient(
            self._servers,
            identity.roots_pem,
            key_pem=identity.key_pem,
            cert_pem=identity.cert_pem,
            timeout=self._timeout,
        )
        with self._lock:
            self._clients.append(client)
        return client

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stop.set()
        self._watcher.stop()
        with self._lock:
            for client in self._clients:  # ends a waiting Listen stream
                client.close()

    def run(self) -> int:
        identity = self._state.load()
        # One failover state for the three jobs: an address one of them found down is
        # not tried first by the others.
        self._servers = Servers(identity.settings.servers)
        self._watcher = Watcher(
            self._state,
            identity,
            self._client,
            as_json=True,
            exec_cmd=None,
            silence_timeout=30.0,
            on_stale_key_files=self._refetch,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        threads = [threading.Thread(target=self._guarded, args=(self._watch,), name="watch", daemon=True)]
        if self._listen:
            threads.append(
                threading.Thread(target=self._guarded, args=(self._answer,), name="listen", daemon=True)
            )
        for t in threads:
            t.start()
        logger.info(
            "agent running",
            extra={"agent": identity.settings.name, "servers": ",".join(identity.settings.servers)},
        )
        self._renew_loop()
        self.stop()
        for t in threads:
            t.join(10)
        if self._failure is not None:  # revoked (one line, exit 11), or a bug: never a silent exit 0
            raise self._failure
        logger.info("agent stopped")
        return 0

    def _guarded(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # a revoked agent, or a bug: stop everything and report it
            if self._stop.is_set() and not isinstance(exc, KmsError):
                # Stopping closes the clients under the jobs: what that breaks is not a failure.
                logger.debug("%s ended while stopping: %r", threading.current_thread().name, exc)
                return
            self._failure = exc
            self._stop.set()

    # --- the three jobs ---------------------------------------------------------------

    def _renew_loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            identity = self._state.load()
            # Lapsed (the server was out of reach until too late): no renewal can help any more, and
            # retrying would only log "cannot reach" for ever. Stop, saying what to do.
            refuse_expired(identity, datetime.now(UTC))
            start, end = identity.cert.not_valid_before_utc, identity.cert.not_valid_after_utc
            # Renew at the fraction, moved by up to 5% of the lifetime either way, so a
            # fleet enrolled together does not renew together.
            jitter = (end - start) * (random.uniform(-0.05, 0.05))  # noqa: S311 - jitter, not crypto
            due = start + (end - start) * self._fraction + jitter
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait > 0 and not renewal_due(identity, 0.95):
                self._stop.wait(min(wait, 30.0))
                continue
            try:
                with self._client() as client:
                    renew(self._state, identity, client)
                backoff = 1.0
            except Held as exc:  # suspended: renew once released
                logger.warning(
                    "renewal refused while on hold, retrying in %.0fs: %s", HOLD_RETRY, exc.message
                )
                self._stop.wait(HOLD_RETRY)
            except Revoked as exc:
                self._failure = exc
                return
            except KmsError as exc:
                logger.warning("renewal failed, retrying in %.0fs: %s", backoff, exc.message)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RETRY_MAX)

    def _watch(self) -> None:
        self._watcher.run(install_signals=False)

    def _answer(self) -> None:
        ensure_private_dir(self._sessions)
        backoff = 1.0
        while not self._stop.is_set():
            client = self._client()
            identity = self._state.load()
            # The Listen stream's connection carries the certificate it was opened with:
            # reopen it well before that certificate expires.
            left = (identity.cert.not_valid_after_utc - datetime.now(UTC)).total_seconds()
            idle = max(1.0, min(60.0, left / 3))
            try:
                session = respond_once(
                    identity,
                    client,
                    self._handshake_timeout,
                    current=self._state.load,
                    idle=idle,
                    on_failed=lambda exc: logger.warning("exchange failed: %s", exc.message),
                )
                write_atomic(self._sessions / f"{session.session_id}.key", session.key, mode=0o600)
                logger.info(
                    "key exchange answered", extra={"session": session.session_id, "peer": session.peer.name}
                )
                backoff = 1.0
            except Held as exc:  # suspended: listen again once released
                logger.warning("listen refused while on hold, retrying in %.0fs: %s", HOLD_RETRY, exc.message)
                self._stop.wait(HOLD_RETRY)
            except Revoked:
                raise
            except NoExchangeCame:
                continue  # nobody came: reopen with the current certificate
            except DeadlineExceeded as exc:
                logger.warning("exchange failed: %s", exc.message)
            except KmsError as exc:
                if self._stop.is_set():
                    return
                logger.warning("listen failed, retrying in %.0fs: %s", backoff, exc.message)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
            finally:
                client.close()

    def _refetch(self, event: revocation_pb2.RevocationEvent, files: list[KeyFile]) -> None:
        """Moves key files that follow a key to its current version (after a rotation or a compromise)."""
        try:
            with self._client() as client:
                # A key pair's files are PEM (fetch-key of a key pair), all of them: one key, one type.
                pair = any(f.format == "pem" for f in files)
                key = KeyFetcher(self._state.load(), client).fetch(event.key_name, key_pair=pair)
        except KeyDisabled as exc:
            # A rotation or compromise while the key is disabled: its 'enable' event re-fetches
            # every file still listed behind the current version, so a file just deleted for a
            # compromise stays listed (at its old version) to be written again then.
            logger.info("not re-fetching %s until it is enabled: %s", event.key_name, exc.message)
            for file in files:
                self._state.remember_key_file(file)
            return
        except KeyExpired as exc:
            # Nothing new to encrypt under: the files keep their versions, which still decrypt.
            logger.info("not re-fetching %s: %s", event.key_name, exc.message)
            return
        except KmsError as exc:
            # Not fatal: the file keeps its (still decryptable) version, or stays deleted
            # if compromised, until the next event for this key or a manual fetch-key.
            logger.warning("could not re-fetch %s: %s", event.key_name, exc.message)
            return
        for file in files:
            try:
                write_atomic(file.path, encode_key(key.material, file.format), mode=0o600)
            except OSError as exc:  # one unwritable file must not stop the agent
                logger.warning("could not write key file %s: %s", file.path, exc.strerror or exc)
                continue
            self._state.remember_key_file(replace(file, version=key.version))
            logger.info(
                "re-fetched key file",
                extra={"path": str(file.path), "key": key.name, "version": key.version, "seq": event.seq},
            )
