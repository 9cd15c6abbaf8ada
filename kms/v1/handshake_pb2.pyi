from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("version", "group", "nonce", "share", "responder")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    RESPONDER_FIELD_NUMBER: _ClassVar[int]
    version: int
    group: str
    nonce: bytes
    share: bytes
    responder: str
    def __init__(self, version: _Optional[int] = ..., group: _Optional[str] = ..., nonce: _Optional[bytes] = ..., share: _Optional[bytes] = ..., responder: _Optional[str] = ...) -> None: ...

class RespAuth(_message.Message):
    __slots__ = ("nonce", "share", "chain", "signature", "mac")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    share: bytes
    chain: _containers.RepeatedScalarFieldContainer[bytes]
    signature: bytes
    mac: bytes
    def __init__(self, nonce: _Optional[bytes] = ..., share: _Optional[bytes] = ..., chain: _Optional[_Iterable[bytes]] = ..., signature: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class InitAuth(_message.Message):
    __slots__ = ("chain", "signature", "mac")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    chain: _containers.RepeatedScalarFieldContainer[bytes]
    signature: bytes
    mac: bytes
    def __init__(self, chain: _Optional[_Iterable[bytes]] = ..., signature: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("confirm",)
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    confirm: bytes
    def __init__(self, confirm: _Optional[bytes] = ...) -> None: ...

class ListenStart(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Abort(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class HandshakeFrame(_message.Message):
    __slots__ = ("hello", "resp_auth", "init_auth", "finished", "listen", "abort")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESP_AUTH_FIELD_NUMBER: _ClassVar[int]
    INIT_AUTH_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    resp_auth: RespAuth
    init_auth: InitAuth
    finished: Finished
    listen: ListenStart
    abort: Abort
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., resp_auth: _Optional[_Union[RespAuth, _Mapping]] = ..., init_auth: _Optional[_Union[InitAuth, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ..., listen: _Optional[_Union[ListenStart, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ...) -> None: ...
