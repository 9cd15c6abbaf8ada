"""The CA's background work and anonymous signing: the CRL refresher and the TLS rotator outlive a
failure (one log line, a retry), a slow CA key signs CRLs and OCSP answers off the event loop, and
OCSP answers are reused for a while so requests do not each cost a signature."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from kms.errors import Unavailable
from server.ca import crl as crl_module
from server.ca import tls as tls_module
from server.ca.authority import CertificateAuthority, create_external_root, generate_key
from server.ca.crl import CrlPublisher
from server.ca.external import ExternalSigner
from server.ca.keytype import CAKeyType
from server.ca.ocsp import OcspResponder
from server.ca.tls import ServerTls
from server.store.records import CertificateRecord

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


async def _until(done: threading.Event | asyncio.Event, task: asyncio.Task[None]) -> None:
    deadline = asyncio.get_running_loop().time() + 10  # a loaded 2-core machine can be slow
    while not done.is_set() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    assert done.is_set()


def test_the_crl_refresher_outlives_a_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(crl_module, "RETRY_DELAY", 0.0)
    publisher = CrlPublisher.__new__(CrlPublisher)
    done, calls = asyncio.Event(), []

    async def current(generation: int | None = None) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the CA key's token 'kms' failed (DeviceRemoved)\nsecond line")
        done.set()
        return b""

    monkeypatch.setattr(publisher, "current", current)
    monkeypatch.setattr(publisher, "_live", lambda: {1: None})  # one live CA generation

    async def main() -> None:
        await _until(done, asyncio.create_task(publisher.refresh_forever()))

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == (
        "CRL refresh failed, retrying in 0 s: RuntimeError: the CA key's token 'kms' failed (DeviceRemoved)"
    )
    assert record.exc_info is None


def test_the_tls_rotator_outlives_a_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tls_module, "RETRY_DELAY", 0.0)
    tls = ServerTls.__new__(ServerTls)
    done, calls = threading.Event(), []
    renew = [NOW - timedelta(seconds=1)]

    def rotate() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        renew[0] = NOW + timedelta(hours=1)
        done.set()

    monkeypatch.setattr(tls, "rotate", rotate)
    monkeypatch.setattr(tls, "renew_at", lambda: renew[0])
    monkeypatch.setattr(tls, "from_active_ca", lambda: True)
    tls._clock = lambda: NOW

    async def main() -> None:
        await _until(done, asyncio.create_task(tls.rotate_forever()))

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "server certificate rotation failed, retrying in 0 s: OSError:" in record.getMessage()
    assert record.exc_info is None and len(calls) == 2


def test_a_certificate_from_another_ca_is_reissued_until_it_works(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After an activation the server's TLS certificate is due (not from the active CA) whatever its
    renewal time: a failed reissue is retried every RETRY_DELAY until one succeeds."""
    monkeypatch.setattr(tls_module, "RETRY_DELAY", 0.0)
    tls = ServerTls.__new__(ServerTls)
    done, calls, from_active = threading.Event(), [], [False]

    def rotate() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(28, "No space left on device")
        from_active[0] = True
        done.set()

    monkeypatch.setattr(tls, "rotate", rotate)
    monkeypatch.setattr(tls, "renew_at", lambda: NOW + timedelta(days=1))  # renewal not due
    monkeypatch.setattr(tls, "from_active_ca", lambda: from_active[0])
    tls._clock = lambda: NOW

    async def main() -> None:
        assert tls.due()
        await _until(done, asyncio.create_task(tls.rotate_forever()))

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert len(calls) == 3 and not tls.due()


class _Store:
    def __init__(self, record: CertificateRecord) -> None:
        self.record = record

    async def get_certificate(self, serial: str) -> CertificateRecord | None:
        return self.record if serial == self.record.serial else None

    async def next_crl(self) -> tuple[int, list[CertificateRecord]]:
        return 1, []


def test_a_slow_key_signs_off_the_loop_and_ocsp_answers_are_reused(caplog: pytest.LogCaptureFixture) -> None:
    key = generate_key(CAKeyType.EC_P256)

    def ocsp_lines() -> int:
        return sum("tryLater" in r.getMessage() for r in caplog.records)

    signed_on: list[threading.Thread] = []
    down = False

    def sign(data: bytes) -> bytes:
        if down:
            raise Unavailable("the CA key's token 'kms' failed (DeviceRemoved)")
        signed_on.append(threading.current_thread())
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    root = create_external_root(ExternalSigner(key.public_key(), sign), "ocsp.test", timedelta(days=1), NOW)
    clock = [NOW]
    ca = CertificateAuthority(root, "ocsp.test", timedelta(hours=1), lambda: clock[0])
    leaf = ca.issue_server(("leaf.test",), timedelta(hours=1)).cert
    der = leaf.public_bytes(Encoding.DER)
    record = CertificateRecord(format(leaf.serial_number, "x"), "leaf", 0, 0, der, 0, None)
    store: Any = _Store(record)
    responder = OcspResponder(ca, store, lambda: clock[0])
    signed_on.clear()

    def ask(nonce: bytes | None = None) -> ocsp.OCSPResponse:
        builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, root.cert, hashes.SHA1())  # noqa: S303
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        return ocsp.load_der_ocsp_response(
            asyncio.run(responder.respond(builder.build().public_bytes(Encoding.DER)))
        )

    first = ask()
    assert ask(b"n" * 16).signature == first.signature  # the nonce does not buy a signature
    assert len(signed_on) == 1 and signed_on[0] is not threading.main_thread()
    store.record = CertificateRecord(
        record.serial, "leaf", 0, 0, der, 0, None, 1_800_000_000, "keyCompromise"
    )
    assert ask().certificate_status is ocsp.OCSPCertStatus.REVOKED  # a new status: signed at once
    clock[0] = NOW + timedelta(seconds=61)
    ask()  # the cached answer is too old
    assert len(signed_on) == 3
    asyncio.run(CrlPublisher(ca, store, lambda: clock[0]).current())
    assert len(signed_on) == 4 and signed_on[3] is not threading.main_thread()
    down, clock[0] = True, NOW + timedelta(seconds=200)  # the token is down: tryLater, not a traceback
    assert ask().response_status is ocsp.OCSPResponseStatus.TRY_LATER
    assert all(ask(bytes([i]) * 16).response_status is ocsp.OCSPResponseStatus.TRY_LATER for i in range(5))
    assert ocsp_lines() == 1  # one line while it lasts, not one per (anonymous) request
