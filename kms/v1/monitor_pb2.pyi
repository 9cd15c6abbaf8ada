from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObserveRequest(_message.Message):
    __slots__ = ("filter", "agent_offset", "agent_limit", "key_offset", "key_limit", "event_limit", "soon_limit", "interval_ms")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    AGENT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    AGENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEY_OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EVENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    SOON_LIMIT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    filter: str
    agent_offset: int
    agent_limit: int
    key_offset: int
    key_limit: int
    event_limit: int
    soon_limit: int
    interval_ms: int
    def __init__(self, filter: _Optional[str] = ..., agent_offset: _Optional[int] = ..., agent_limit: _Optional[int] = ..., key_offset: _Optional[int] = ..., key_limit: _Optional[int] = ..., event_limit: _Optional[int] = ..., soon_limit: _Optional[int] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class AgentRow(_message.Message):
    __slots__ = ("name", "open_streams", "last_seen", "serial", "not_after", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    open_streams: int
    last_seen: int
    serial: str
    not_after: int
    status: str
    def __init__(self, name: _Optional[str] = ..., open_streams: _Optional[int] = ..., last_seen: _Optional[int] = ..., serial: _Optional[str] = ..., not_after: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class KeyRow(_message.Message):
    __slots__ = ("name", "key_type", "current_version", "disabled", "expires_at", "rotation_due_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ROTATION_DUE_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    key_type: str
    current_version: int
    disabled: bool
    expires_at: int
    rotation_due_at: int
    def __init__(self, name: _Optional[str] = ..., key_type: _Optional[str] = ..., current_version: _Optional[int] = ..., disabled: _Optional[bool] = ..., expires_at: _Optional[int] = ..., rotation_due_at: _Optional[int] = ...) -> None: ...

class SoonRow(_message.Message):
    __slots__ = ("what", "name", "at")
    WHAT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    what: str
    name: str
    at: int
    def __init__(self, what: _Optional[str] = ..., name: _Optional[str] = ..., at: _Optional[int] = ...) -> None: ...

class ObservedEvent(_message.Message):
    __slots__ = ("id", "at", "kind", "subject", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: int
    kind: str
    subject: str
    detail: str
    def __init__(self, id: _Optional[int] = ..., at: _Optional[int] = ..., kind: _Optional[str] = ..., subject: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Overview(_message.Message):
    __slots__ = ("now", "agents_total", "agents_matching", "agents_online", "agents", "keys_total", "keys_matching", "keys", "soon", "events", "rpc_rate", "release_rate", "enrollment_rate")
    NOW_FIELD_NUMBER: _ClassVar[int]
    AGENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    AGENTS_MATCHING_FIELD_NUMBER: _ClassVar[int]
    AGENTS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    KEYS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KEYS_MATCHING_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SOON_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RPC_RATE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_RATE_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENT_RATE_FIELD_NUMBER: _ClassVar[int]
    now: int
    agents_total: int
    agents_matching: int
    agents_online: int
    agents: _containers.RepeatedCompositeFieldContainer[AgentRow]
    keys_total: int
    keys_matching: int
    keys: _containers.RepeatedCompositeFieldContainer[KeyRow]
    soon: _containers.RepeatedCompositeFieldContainer[SoonRow]
    events: _containers.RepeatedCompositeFieldContainer[ObservedEvent]
    rpc_rate: _containers.RepeatedScalarFieldContainer[float]
    release_rate: _containers.RepeatedScalarFieldContainer[float]
    enrollment_rate: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, now: _Optional[int] = ..., agents_total: _Optional[int] = ..., agents_matching: _Optional[int] = ..., agents_online: _Optional[int] = ..., agents: _Optional[_Iterable[_Union[AgentRow, _Mapping]]] = ..., keys_total: _Optional[int] = ..., keys_matching: _Optional[int] = ..., keys: _Optional[_Iterable[_Union[KeyRow, _Mapping]]] = ..., soon: _Optional[_Iterable[_Union[SoonRow, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[ObservedEvent, _Mapping]]] = ..., rpc_rate: _Optional[_Iterable[float]] = ..., release_rate: _Optional[_Iterable[float]] = ..., enrollment_rate: _Optional[_Iterable[float]] = ...) -> None: ...

class GetStandingRequest(_message.Message):
    __slots__ = ("name", "serial")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    serial: str
    def __init__(self, name: _Optional[str] = ..., serial: _Optional[str] = ...) -> None: ...

class Standing(_message.Message):
    __slots__ = ("agent", "groups", "valid_certificates", "serial_valid", "open_streams", "serial_open_streams", "newest_serial", "newest_status", "newest_not_after")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    VALID_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    SERIAL_VALID_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    SERIAL_OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    NEWEST_SERIAL_FIELD_NUMBER: _ClassVar[int]
    NEWEST_STATUS_FIELD_NUMBER: _ClassVar[int]
    NEWEST_NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    agent: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    valid_certificates: int
    serial_valid: bool
    open_streams: int
    serial_open_streams: int
    newest_serial: str
    newest_status: str
    newest_not_after: int
    def __init__(self, agent: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., valid_certificates: _Optional[int] = ..., serial_valid: _Optional[bool] = ..., open_streams: _Optional[int] = ..., serial_open_streams: _Optional[int] = ..., newest_serial: _Optional[str] = ..., newest_status: _Optional[str] = ..., newest_not_after: _Optional[int] = ...) -> None: ...
