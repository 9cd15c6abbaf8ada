from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RevocationEvent(_message.Message):
    __slots__ = ("seq", "kind", "serial", "agent_name", "key_name", "key_version", "reason", "at", "state", "released_by")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_BY_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    serial: str
    agent_name: str
    key_name: str
    key_version: int
    reason: str
    at: int
    state: str
    released_by: int
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., serial: _Optional[str] = ..., agent_name: _Optional[str] = ..., key_name: _Optional[str] = ..., key_version: _Optional[int] = ..., reason: _Optional[str] = ..., at: _Optional[int] = ..., state: _Optional[str] = ..., released_by: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("after_seq",)
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    def __init__(self, after_seq: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("current_seq",)
    CURRENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    current_seq: int
    def __init__(self, current_seq: _Optional[int] = ...) -> None: ...

class Resume(_message.Message):
    __slots__ = ("after_seq", "reason")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    reason: str
    def __init__(self, after_seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("event", "heartbeat", "resume")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    event: RevocationEvent
    heartbeat: Heartbeat
    resume: Resume
    def __init__(self, event: _Optional[_Union[RevocationEvent, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., resume: _Optional[_Union[Resume, _Mapping]] = ...) -> None: ...

class GetCRLRequest(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class GetCRLResponse(_message.Message):
    __slots__ = ("crl_der",)
    CRL_DER_FIELD_NUMBER: _ClassVar[int]
    crl_der: bytes
    def __init__(self, crl_der: _Optional[bytes] = ...) -> None: ...

class CheckCertificateRequest(_message.Message):
    __slots__ = ("serial",)
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    serial: str
    def __init__(self, serial: _Optional[str] = ...) -> None: ...

class CheckCertificateResponse(_message.Message):
    __slots__ = ("serial", "status", "reason", "revoked_at", "agent_name", "not_after")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    serial: str
    status: str
    reason: str
    revoked_at: int
    agent_name: str
    not_after: int
    def __init__(self, serial: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., revoked_at: _Optional[int] = ..., agent_name: _Optional[str] = ..., not_after: _Optional[int] = ...) -> None: ...
