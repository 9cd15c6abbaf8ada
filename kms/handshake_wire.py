"""kms.handshake messages to and from kms.v1 HandshakeFrame (both sides convert the same way)."""

from __future__ import annotations

from kms.handshake import Finished, Hello, InitAuth, Malformed, Message, RespAuth
from kms.v1 import handshake_pb2

__all__ = ["from_frame", "to_frame"]


def to_frame(message: Message) -> handshake_pb2.HandshakeFrame:
    if isinstance(message, Hello):
        return handshake_pb2.HandshakeFrame(
            hello=handshake_pb2.Hello(
                version=message.version,
                group=message.group,
                nonce=message.nonce,
                share=message.share,
                responder=message.responder,
            )
        )
    if isinstance(message, RespAuth):
        return handshake_pb2.HandshakeFrame(
            resp_auth=handshake_pb2.RespAuth(
                nonce=message.nonce,
                share=message.share,
                chain=list(message.chain),
                signature=message.signature,
                mac=message.mac,
            )
        )
    if isinstance(message, InitAuth):
        return handshake_pb2.HandshakeFrame(
            init_auth=handshake_pb2.InitAuth(
                chain=list(message.chain), signature=message.signature, mac=message.mac
            )
        )
    return handshake_pb2.HandshakeFrame(finished=handshake_pb2.Finished(confirm=message.confirm))


def from_frame(frame: handshake_pb2.HandshakeFrame) -> Message:
    """Raises Malformed for an empty frame or a listen frame where a message belongs."""
    which = frame.WhichOneof("frame")
    if which == "hello":
        h = frame.hello
        return Hello(h.version, h.group, h.nonce, h.share, h.responder)
    if which == "resp_auth":
        r = frame.resp_auth
        return RespAuth(r.nonce, r.share, tuple(r.chain), r.signature, r.mac)
    if which == "init_auth":
        i = frame.init_auth
        return InitAuth(tuple(i.chain), i.signature, i.mac)
    if which == "finished":
        return Finished(frame.finished.confirm)
    raise Malformed(f"expected a handshake message, got {which or 'an empty frame'}")
