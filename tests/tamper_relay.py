"""A test-only stand-in for kms-server's handshake relay, which can flip one byte or stall.

It serves the Handshake service (and a CheckCertificate that answers "good")
with the real server's TLS identity, unsealed from the data dir with its
master key, so real kms-agent processes accept it. It pairs one Exchange
with one Listen and forwards frames, changing what the test asks it to.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from kms.v1 import handshake_pb2, handshake_pb2_grpc, revocation_pb2, revocation_pb2_grpc
from server.deployment.sealing import open_sealed

Frame = handshake_pb2.HandshakeFrame


def _flip(frame: Frame, field: str) -> Frame:
    which = frame.WhichOneof("frame")
    out = Frame()
    out.CopyFrom(frame)
    message = getattr(out, which)
    value = getattr(message, field)
    if isinstance(value, bytes):
        setattr(message, field, bytes([value[0] ^ 1]) + value[1:])
    else:  # a repeated bytes field: flip inside the first certificate
        first = bytearray(value[0])
        first[len(first) // 2] ^= 1
        value[0] = bytes(first)
    return out


class TamperRelay(handshake_pb2_grpc.HandshakeServicer, revocation_pb2_grpc.RevocationServicer):
    def __init__(
        self, data_dir: Path, *, tamper: tuple[str, str] | None = None, stall: str | None = None
    ) -> None:
        self.tamper = tamper  # (frame kind, field), e.g. ("resp_auth", "signature")
        self.stall = stall  # a frame kind never forwarded
        self.listening = threading.Event()  # set once an agent's Listen stream is open
        self._to_listener: queue.Queue[Frame | None] = queue.Queue()
        self._to_initiator: queue.Queue[Frame | None] = queue.Queue()
        master = (data_dir / "master.key").read_bytes()
        key_der = open_sealed(master, "server.key", (data_dir / "server.key").read_bytes())
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_der_private_key(key_der, None)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain = (data_dir / "server.crt").read_bytes() + (data_dir / "ca.crt").read_bytes()
        creds = grpc.ssl_server_credentials(
            [(key_pem, chain)], root_certificates=(data_dir / "ca.crt").read_bytes(), require_client_auth=True
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handshake_pb2_grpc.add_HandshakeServicer_to_server(self, self.server)
        revocation_pb2_grpc.add_RevocationServicer_to_server(self, self.server)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def stop(self) -> None:
        self._to_listener.put(None)
        self._to_initiator.put(None)
        self.server.stop(0)

    def _forward(self, frame: Frame, to: queue.Queue[Frame | None]) -> None:
        kind = frame.WhichOneof("frame")
        if kind == self.stall:
            return
        if self.tamper and kind == self.tamper[0]:
            frame = _flip(frame, self.tamper[1])
        to.put(frame)

    def _pump(
        self, frames: Iterator[Frame], to: queue.Queue[Frame | None], context: grpc.ServicerContext
    ) -> None:
        def run() -> None:
            try:
                for frame in frames:
                    self._forward(frame, to)
            except grpc.RpcError:
                pass
            if self.stall is None:  # this side ended: end the other side's stream too
                to.put(None)

        threading.Thread(target=run, daemon=True).start()

    def _drain(self, source: queue.Queue[Frame | None]) -> Iterator[Frame]:
        while (frame := source.get()) is not None:
            yield frame

    def Exchange(self, request_iterator: Iterator[Frame], context: grpc.ServicerContext) -> Iterator[Frame]:
        self._pump(request_iterator, self._to_listener, context)
        yield from self._drain(self._to_initiator)

    def Listen(self, request_iterator: Iterator[Frame], context: grpc.ServicerContext) -> Iterator[Frame]:
        next(request_iterator)  # the listen frame
        self.listening.set()
        self._pump(request_iterator, self._to_initiator, context)
        yield from self._drain(self._to_listener)

    def CheckCertificate(
        self, request: revocation_pb2.CheckCertificateRequest, context: grpc.ServicerContext
    ) -> revocation_pb2.CheckCertificateResponse:
        return revocation_pb2.CheckCertificateResponse(serial=request.serial, status="good")
